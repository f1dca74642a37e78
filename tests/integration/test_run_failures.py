"""Runs that end badly end cleanly: a loss that becomes nan or inf stops the run at once with one
line naming the epoch and step, and no checkpoint keeps its weights; a YAML alias bomb is
refused before any run exists; SIGTERM and Ctrl-C end the MLflow run KILLED, never RUNNING.
The real `waldo` console script for what a user sees, in-process for the pieces."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from support import wait_until

ERROR_LINE = "waldo train: error: training loss became {} at epoch 0, step {}; the run diverged"


def store(folder: Path) -> tuple[str, MlflowClient]:
    """A local MLflow store, created here before any `waldo` process writes to it."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.search_experiments()
    return uri, client


def runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("waldo")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def finite_checkpoints(folder: Path) -> bool:
    """Whether every checkpoint under `folder` holds finite weights only."""
    for path in folder.rglob("*.ckpt"):
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
            return False
    return True


# --- the `waldo` command ----------------------------------------------------------------------
@pytest.mark.trains
def test_a_diverging_run_stops_at_once_fails_and_keeps_no_broken_weights(tmp_path, waldo):
    uri, client = store(tmp_path)
    # Adam moves every weight by about lr on the first step: 1e30 overflows float32 at step 1.
    proc = waldo.run("train", "--data", "digits", "--lr", "1e30", "--epochs", "3", "--no-progress-bar",
                     "--tracking-uri", uri, cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]), proc.stderr
    assert errors[0].startswith(ERROR_LINE.format("nan", 1)) or errors[0].startswith(
        ERROR_LINE.format("inf", 1)), errors[0]
    assert "lower --lr (it was 1e+30)" in errors[0]
    assert proc.returncode == 1, proc.stderr  # a run that ran and failed, not a refused spec (2)
    assert [r.info.status for r in runs(client)] == ["FAILED"]
    assert finite_checkpoints(tmp_path), "a checkpoint kept nan or inf weights"


def _limit_memory() -> None:  # in the child: a bomb that got through fails instead of swapping
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))


def test_an_alias_bomb_is_refused_quickly_before_any_run(tmp_path, waldo):
    lines = ["model_args:", "  l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    proc = subprocess.run([*waldo.command(), "train", "--config", "bomb.yaml"], cwd=tmp_path,
                          env=waldo.env(), capture_output=True, text=True, timeout=120,
                          preexec_fn=_limit_memory)
    elapsed = time.monotonic() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "bomb.yaml" in lines[0] and "aliases" in lines[0], lines[0]
    assert elapsed < 30, elapsed
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "waldo_runs").exists()


@pytest.mark.trains
def test_sigterm_and_ctrl_c_end_the_run_killed(tmp_path, waldo):
    """Both signals at once (each process pays the interpreter and torch start-up), once the
    run trains: Lightning handles both signals itself during `fit`. A first checkpoint in the
    run's folder (named by its MLflow run id) says so without reading the SQLite store while
    the run writes to it, which can fail the run's own write ("database is locked")."""
    signals = {"SIGTERM": (signal.SIGTERM, 143, "stopped by SIGTERM"),
               "SIGINT": (signal.SIGINT, 130, "interrupted")}
    procs, clients = {}, {}
    try:
        for name in signals:
            folder = tmp_path / name
            folder.mkdir()
            uri, clients[name] = store(folder)
            procs[name] = waldo.start("train", "--data", "digits", "--epochs", "200", "--no-progress-bar",
                                      "--tracking-uri", uri, cwd=folder)
        for name, proc in procs.items():
            runs_folder = tmp_path / name / "waldo_runs"
            wait_until(lambda f=runs_folder: any(f.glob("*/checkpoints/*.ckpt")),
                       what=f"{name}: a run that trains", proc=proc, timeout=120)
        for name, proc in procs.items():
            proc.send_signal(signals[name][0])
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=60)
            _, code, said = signals[name]
            assert "Traceback" not in err, err
            assert proc.returncode == code, (name, proc.returncode, err[-2000:])
            assert err.strip().splitlines()[-1] == f"waldo train: {said}", err[-2000:]
            assert [r.info.status for r in runs(clients[name])] == ["KILLED"], name
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


# --- the pieces, in-process -------------------------------------------------------------------
def breaking_module(what: str):
    """A module whose loss (`what="loss"`), or a buffer the loss does not use ("weights"),
    becomes nan or inf at step 3."""
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.register_buffer("unused", torch.zeros(1))

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            if self.global_step == 3 and what == "loss":
                loss = loss * float("nan")
            if self.global_step == 3 and what == "weights":
                self.unused.fill_(float("inf"))
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.layer(batch[0]).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Module()


@pytest.mark.trains
@pytest.mark.parametrize("what,every,expected", [
    ("loss", 1, "training loss became nan at epoch 0, step 3; the run diverged: lower --lr"),
    ("loss", 4, "training loss became nan at epoch 0, step 3; the run diverged: lower --lr"),
    ("weights", 1, "the weights became nan or inf by epoch 0, step 8; the run diverged: lower --lr"),
])
def test_the_stop_names_the_first_bad_step_and_no_checkpoint_is_written(tmp_path, what, every,
                                                                         expected):
    """Read every step (the CPU) or every 4th (as on an accelerator, where a read stalls the
    queue): the first bad step is named either way, before any checkpoint is saved."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from training.running.callbacks import StopOnNonFinite, TrainingDiverged

    data = DataLoader(TensorDataset(torch.randn(32, 4)), batch_size=4)  # 8 steps an epoch
    checkpoints = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_last=True)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[checkpoints, StopOnNonFinite("lower --lr", every=every)])
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit(breaking_module(what), train_dataloaders=data, val_dataloaders=data)
    assert str(info.value) == expected
    assert info.value.exit_code == 1
    assert not list(tmp_path.glob("*.ckpt"))


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> str:
    return store(tmp_path_factory.mktemp("tracking"))[0]


@pytest.mark.parametrize("code", [1, None])
def test_a_run_left_by_system_exit_is_killed(tracking, code):
    """Lightning turns Ctrl-C during `fit` into sys.exit(1), and SIGTERM into its
    SIGTERMException (a SystemExit without a code): the process was stopped, nothing failed."""
    from training.tracking.runs import start_run

    with pytest.raises(SystemExit):
        with start_run("waldo", tracking_uri=tracking) as run:
            raise SystemExit(code)
    assert MlflowClient(tracking).get_run(run.run_id).info.status == "KILLED"


def test_sigterm_in_a_run_raises_in_the_main_thread_and_kills_the_run(tracking):
    """The handler start_run installs (a real SIGTERM is sent in the CLI test above)."""
    from training.tracking.runs import EXIT_SIGTERM, start_run

    # As in a fresh `waldo train`; an in-process Ray driver earlier in this session installed
    # its own handler, which start_run rightly leaves alone.
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(SystemExit) as info:
            with start_run("waldo", tracking_uri=tracking) as run:
                handler = signal.getsignal(signal.SIGTERM)
                assert callable(handler), "start_run leaves SIGTERM's default: the process dies RUNNING"
                handler(signal.SIGTERM, sys._getframe())
        assert info.value.code == EXIT_SIGTERM == 143
        assert MlflowClient(tracking).get_run(run.run_id).info.status == "KILLED"
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_sigterm_while_the_run_is_created_waits_until_it_can_be_closed(tracking):
    from training.tracking.runs import _SigtermAsExit

    handler = _SigtermAsExit()
    with pytest.raises(SystemExit):
        with handler.held():
            handler(signal.SIGTERM, None)  # held: nothing raised yet
            reached = True
    assert reached
    handler(signal.SIGTERM, None)  # only the first SIGTERM raises: the status gets written


def test_a_sweep_stopped_early_closes_its_trials_runs(tracking):
    """Tune's trial processes die with the sweep, and their child runs with them: the sweep
    closes those still RUNNING with its own outcome."""
    from training.running.sweep import _end_open_children
    from training.tracking.runs import start_run

    client = MlflowClient(tracking)
    with start_run("sweep", tracking_uri=tracking) as parent:
        child = client.create_run(parent.experiment_id,
                                  tags={"mlflow.parentRunId": parent.run_id}).info.run_id
        done = client.create_run(parent.experiment_id,
                                 tags={"mlflow.parentRunId": parent.run_id}).info.run_id
        client.set_terminated(done, "FINISHED")
        _end_open_children(parent, "KILLED")
    assert client.get_run(child).info.status == "KILLED"
    assert client.get_run(done).info.status == "FINISHED"


def test_a_ctrl_c_during_a_tracking_write_lands_after_it(tracking, monkeypatch):
    """A KeyboardInterrupt inside a write to the SQLite store could leave the database locked
    for the rest of the process (the run then stays RUNNING, and every later write fails after
    20 s): a Ctrl-C that comes while a run writes is raised once the write is done."""
    import os

    from training.tracking.runs import start_run

    # Python's own Ctrl-C handler, as in `waldo train` (a pytest-xdist worker ignores SIGINT).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), start_run("waldo", tracking_uri=tracking) as run:
            write = run.client.log_metric

            def interrupted_write(*args, **kwargs):
                os.kill(os.getpid(), signal.SIGINT)  # its handler runs at once, in this thread
                return write(*args, **kwargs)

            monkeypatch.setattr(run.client, "log_metric", interrupted_write)
            run.log_metrics({"first": 1.0, "second": 2.0})
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)
    finished = MlflowClient(tracking).get_run(run.run_id)
    assert finished.data.metrics["first"] == 1.0 and finished.data.metrics["second"] == 2.0
    assert finished.info.status == "KILLED"


def test_the_lightning_logger_leaves_the_runs_status_to_its_owner(tracking):
    """Lightning's MLflow logger ends the run when `fit` ends (FINISHED, with the test still to
    come) or is interrupted (FAILED, where the run was KILLED); Waldo's does not."""
    from training.running.steps import RunLogger
    from training.tracking.runs import start_run

    client = MlflowClient(tracking)
    with start_run("waldo", tracking_uri=tracking) as run:
        logger = RunLogger(experiment_name="waldo", tracking_uri=tracking, run_id=run.run_id)
        logger.log_metrics({"val_loss": 0.5}, step=0)
        logger.finalize("failed")
        assert client.get_run(run.run_id).info.status == "RUNNING"
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert client.get_run(run.run_id).data.metrics["val_loss"] == 0.5
