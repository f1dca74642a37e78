"""Distributed training, recovery and sweeps on a real Ray (local, and two nodes on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support import (
    LOCAL_RAY_CPUS,
    clean_env,
    session_pids,
    start_process,
    stop_group,
    wait_until,
)

from training.errors import WaldoError
from training.spec import SweepSpec, TrainSpec

# The in-process tests run on the session's local Ray (the `local_ray` fixture, tests/conftest.py).


def _leftovers(folder: Path) -> list[str]:
    """Temporary folders of ours or of Ray Train's Lightning callback left behind."""
    return sorted(p.name for p in folder.glob("*")
                  if p.name.startswith(("lightning_checkpoints-", "waldo-")))


def _history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key),
                                    key=lambda m: (m.timestamp, m.step))]


@pytest.mark.trains
def test_two_workers_match_one_process_and_both_ranks_train(local_ray, ray_tmp, in_tmp, mlflow_server):
    from training.running.pipeline import run

    # The plain recipe: what is compared is one process against two workers, and with 2 x 64
    # images a step the digits recipe (augmentation, EMA) would still be converging after 12
    # epochs. One Ray worker runs the network as it is, as this process does (`_strategy`).
    base = dict(model="cnn", data="digits", epochs=12, batch_size=32, augment="none",
                label_smoothing=0.0, ema_decay=None, tracking_uri=mlflow_server,
                experiment="ray-two-workers", progress_bar=False)
    one = run(TrainSpec(**base, workers=0))
    two = run(TrainSpec(**base, workers=2))
    client = MlflowClient(mlflow_server)
    acc_one = client.get_run(one.run_id).data.metrics["test_acc"]
    acc_two = client.get_run(two.run_id).data.metrics["test_acc"]
    assert abs(acc_one - acc_two) <= 0.02, (acc_one, acc_two)
    # Each rank logged how many images it trained on; together they cover the training set.
    rank0 = _history(client, two.run_id, "train_samples_rank0")
    rank1 = _history(client, two.run_id, "train_samples_rank1")
    assert len(rank0) == len(rank1) == 12
    assert min(rank0) > 0 and min(rank1) > 0
    assert rank0[-1] + rank1[-1] >= 1221  # digits' training split, padded to an even share
    waits = _history(client, two.run_id, "data_wait_fraction")  # the worst rank's, per epoch
    assert len(waits) == 12 and all(0.0 <= w <= 1.0 for w in waits)
    tags = client.get_run(two.run_id).data.tags
    assert tags["ray.workers"] == "2" and tags["ray.storage_path"].endswith(tags["ray.run_name"])
    # The storage contract: the best checkpoint's place in storage and its artifact copy.
    assert tags["waldo.best_checkpoint"] == two.best_checkpoint
    assert Path(two.best_checkpoint).is_file()
    assert two.best_checkpoint.startswith(str(in_tmp / "waldo_runs" / tags["ray.run_name"]))
    artifact = tags["waldo.best_checkpoint_artifact"]
    assert artifact in {f.path for f in client.list_artifacts(two.run_id, "best")}
    # Rank 0 drew what the network looks at, as the in-process runner does.
    pictures = {f.path for f in client.list_artifacts(two.run_id, "pictures")}
    assert "pictures/gradcam_correct.png" in pictures, pictures
    assert "first_layer_filters.png" in {f.path for f in client.list_artifacts(two.run_id)}
    # Neither the workers nor Ray's Lightning callback left temporary folders behind.
    assert _leftovers(ray_tmp) == []


@pytest.mark.trains
def test_killed_worker_resumes_from_its_checkpoint(local_ray, in_tmp, mlflow_server):
    import ray.util.state

    from training.running.pipeline import run as train

    epochs = 8
    spec = TrainSpec(model="cnn", data="digits", epochs=epochs, workers=2, max_failures=2,
                     tracking_uri=mlflow_server, experiment="ray-kill", run_name="kill-me",
                     progress_bar=False)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=train(spec)), daemon=True)
    thread.start()
    client = MlflowClient(mlflow_server)
    experiment = None
    deadline = time.time() + 300
    killed_after = None
    while time.time() < deadline and killed_after is None:
        time.sleep(1)
        experiment = experiment or client.get_experiment_by_name("ray-kill")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        done = _history(client, runs[0].info.run_id, "epoch") if runs else []
        if done and max(done) >= 3:  # a few epochs in, with checkpoints behind us
            workers = ray.util.state.list_actors(
                address=f"http://{local_ray.dashboard_url}",
                filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed_after = max(done)
    assert killed_after is not None, "training never got far enough to kill a worker"
    thread.join(timeout=600)
    assert "result" in outcome, "the job did not finish after the worker was killed"
    run_id = outcome["result"].run_id
    epochs_logged = _history(client, run_id, "epoch")
    assert max(epochs_logged) == epochs
    # The restarted group carried on from the last checkpoint, not from epoch 0.
    after_kill = epochs_logged[epochs_logged.index(killed_after) + 1:]
    assert after_kill and min(after_kill) >= killed_after - 1
    assert client.get_run(run_id).info.status == "FINISHED"


def test_more_workers_than_the_cluster_has_is_refused(local_ray, in_tmp):
    from training.running.pipeline import run

    with pytest.raises(WaldoError, match=f"16 workers need 16 CPUs.*has {LOCAL_RAY_CPUS} CPUs"):
        run(TrainSpec(model="cnn", workers=16, epochs=1, progress_bar=False))


def test_unknown_search_distribution_and_parameter_are_refused():
    from training.spec import build_spec

    with pytest.raises(WaldoError, match="unknown search distribution 'gaussian'.*loguniform"):
        build_spec(SweepSpec, None, {"search": {"lr": "gaussian(0,1)"}})
    with pytest.raises(WaldoError, match="unknown search parameter 'learning_rate'"):
        build_spec(SweepSpec, None, {"search": {"learning_rate": "uniform(0,1)"}})


@pytest.mark.trains
def test_sweep_with_asha_stops_a_trial_exports_the_best_and_moves_the_alias(
        local_ray, ray_tmp, in_tmp):
    """`waldo sweep ... --export --alias sweep-best` as a new user runs it: in an empty folder
    with no tracking URI and no storage, the parent run, every trial's child run and the
    checkpoints land under this folder, not in Ray's per-trial working folders. A first holder
    of its alias, so the promotion gate judges it on absolute thresholds."""
    from training.running.pipeline import run_sweep
    from training.running.sweep import STOPPED_EARLY

    # The search draws from the seed: lr 3.6e-4 and 5.7e-2 first, then 5.3e-6 for a third trial
    # that starts when one of the first two has finished, so ASHA has their results to stop it.
    spec = SweepSpec(model="cnn", data="digits", epochs=2, trials=3, max_concurrent=2,
                     search={"lr": "loguniform(1e-6,1e-1)"}, experiment="ray-sweep",
                     progress_bar=False, seed=1, export=True, alias="sweep-best")
    result = run_sweep(spec)
    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ray-sweep")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert [p.info.run_id for p in parents] == [result.parent_run_id]
    assert len(children) >= 3, [r.info.run_name for r in runs]
    statuses = [c.data.tags.get("waldo.trial_status") for c in children]
    assert STOPPED_EARLY in statuses, statuses
    assert all(c.data.params.get("lr") for c in children)
    # A trial the scheduler stopped is no failure: FINISHED, and tagged as stopped early.
    for child in children:
        stopped = child.data.tags.get("waldo.trial_status") == STOPPED_EARLY
        assert child.data.tags.get("waldo.stopped_early") == ("true" if stopped else None)
        assert child.info.status == ("FAILED" if child.data.tags.get("waldo.trial_status") == "failed"
                                     else "FINISHED"), (child.info.run_id, child.info.status)
    assert result.parent_run_id in result.ui_hint
    parent = client.get_run(result.parent_run_id)
    best_run = parent.data.tags["best.run_id"]
    assert best_run == result.best_run_id and best_run in {c.info.run_id for c in children}
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"trials.png", "best_trial.json", "best"} <= artifacts
    # The best trial's checkpoint is in this folder's storage, recorded on the parent.
    assert result.best_checkpoint.startswith(str(in_tmp / "waldo_runs"))
    assert Path(result.best_checkpoint).is_file()
    assert parent.data.tags["waldo.best_checkpoint"] == result.best_checkpoint
    # It was exported and registered, linked to the best trial's run.
    assert result.export is not None and result.export.alias == "sweep-best"
    version = client.get_model_version_by_alias(result.export.name, "sweep-best")
    assert str(version.version) == str(result.export.version)  # an int from a SQLite store
    assert version.run_id == best_run
    assert result.export.card.source_run == best_run
    assert result.export.path is None and result.export.promotion.verdict == "passed"  # registry only
    # Stopped trials' processes were ended without cleaning up; the sweep did it for them.
    assert _leftovers(ray_tmp) == []


def test_unreachable_ray_address_is_a_clear_error(tmp_path, waldo):
    out = waldo.run("train", "--workers", "1", "--ray-address", "127.0.0.1:1", "--epochs", "1",
                    cwd=tmp_path, env=clean_env(RAY_AUTH_MODE="token"), timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cannot connect to Ray at '127.0.0.1:1'" in out.stderr
    assert "Traceback" not in out.stderr


def _checkpoints(storage: Path, name: str) -> list[tuple[int, int]]:
    """(epoch, global step) of every checkpoint Ray Train has registered for job `name`, from
    its checkpoint manager's snapshot: what a restarted job restores from."""
    try:
        snapshot = json.loads((storage / name / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return []
    return sorted((int(r["metrics"]["epoch"]), int(r["metrics"]["step"]))
                  for r in snapshot["checkpoint_results"])


@pytest.mark.trains
@pytest.mark.ray
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the driver's processes in /proc")
def test_resume_continues_a_job_whose_driver_died(tmp_path, mlflow_server, waldo):
    """SIGKILL a `waldo train --workers 1` driver mid-training (its local Ray dies with it),
    then `waldo train --resume NAME`: the same MLflow run carries on from the last registered
    checkpoint, in a new local Ray, to the requested epoch."""
    name, epochs, storage = "driver-dies", 10, tmp_path / "runs"
    argv = [*waldo.command(), "train", "--model", "cnn", "--data", "digits", "--workers", "1",
            "--epochs", str(epochs), "--run-name", name, "--storage", str(storage),
            "--tracking-uri", mlflow_server, "--experiment", "ray-driver-dies",
            "--no-progress-bar"]
    log = tmp_path / "driver.log"
    # Its own session (with `clean_env()`), so that the driver and everything it started can be
    # found and ended afterwards.
    driver = start_process(argv, log=log, cwd=tmp_path)
    try:
        wait_until(lambda: any(e >= 2 for e, _ in _checkpoints(storage, name)),
                   what="epochs checkpointed before the driver is killed", timeout=400,
                   proc=driver, log=log, interval=0.2)
        os.kill(driver.pid, signal.SIGKILL)
        assert driver.wait(timeout=30) == -signal.SIGKILL
    finally:
        # The host goes down with the driver: its local Ray and the job's workers die at once
        # (left alone, a fast machine's workers finish the job before Ray notices the driver).
        stop_group(driver)
    wait_until(lambda: not session_pids(driver.pid), what="the dead driver's processes ended",
               timeout=30)
    last_epoch, last_step = _checkpoints(storage, name)[-1]
    assert last_epoch < epochs - 1, "the driver finished training before it was killed"

    job = json.loads((storage / name / "waldo_job.json").read_text())
    client = MlflowClient(mlflow_server)
    assert client.get_run(job["run_id"]).info.status == "RUNNING"  # the dead driver left it open

    resumed_at = time.time() * 1000  # nothing of the dead driver's job runs any more
    out = waldo.run("train", "--resume", name, "--storage", str(storage),
                    "--tracking-uri", mlflow_server, cwd=tmp_path, timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"run {job['run_id']}:" in out.stdout
    run = client.get_run(job["run_id"])
    assert run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(job["run_id"], "epoch"),
                     key=lambda m: (m.timestamp, m.step))
    before = [m for m in history if m.timestamp <= resumed_at]
    after = [m for m in history if m.timestamp > resumed_at]
    assert before and after, history
    # The resumed driver carried on from the last registered checkpoint (Lightning ends that
    # checkpoint's epoch, or starts the next), with the epoch and step counters it had: not
    # from epoch 0, and with no epoch left out up to the requested one.
    assert after[0].value in (last_epoch, last_epoch + 1), (last_epoch, [m.value for m in after])
    assert after[0].step >= last_step, (last_step, after[0])
    assert min(m.value for m in after) > 0
    assert max(m.value for m in after) == epochs
    assert set(range(epochs + 1)) <= {m.value for m in history}
    # And from the checkpoint's weights: no loss anywhere near a fresh network's.
    losses = sorted(client.get_metric_history(job["run_id"], "train_loss"), key=lambda m: m.timestamp)
    first_loss = losses[0].value
    resumed = [round(m.value, 3) for m in losses if m.timestamp > resumed_at]
    assert max(resumed) < 0.75 * first_loss, (first_loss, resumed)


def test_resume_takes_no_other_spec_flags(tmp_path, waldo):
    out = waldo.run("train", "--resume", "some-job", "--epochs", "30", cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "--resume continues a job with the spec it was started with" in out.stderr
    assert "(got --epochs)" in out.stderr and "Traceback" not in out.stderr
