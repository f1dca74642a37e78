"""What a new user meets in the first hour: MLflow links that open the model-training view and
experiments tagged as such, a progress bar only on a terminal, help that shows what is used,
no empty ./data left by a failed download, no download progress bars, and sweep trials that
the scheduler stopped recorded as finished."""

from __future__ import annotations

import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from training.errors import WaldoError
from training.tracking.runs import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    Run,
    run_link,
    start_run,
)
from waldo.cli import main

VIEW = "?workflowType=machine_learning"  # what MLflow 3's UI reads to open the Runs view


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


# --- MLflow links and the experiment's kind ---------------------------------------------------
def test_run_hints_link_the_model_training_view(in_tmp):
    client = MlflowClient(sqlite_uri(in_tmp))
    for n, uri in enumerate((sqlite_uri(in_tmp), "http://mlflow.example:5000/")):
        experiment_id = client.create_experiment(f"links-{n}")
        run_id = client.create_run(experiment_id).info.run_id
        hint = Run(client, run_id, experiment_id, uri).ui_hint
        link = re.search(r"http://\S+", hint).group(0)
        # The view parameter belongs to the hash route, which MLflow's router reads.
        assert link.endswith(f"#/experiments/{experiment_id}/runs/{run_id}{VIEW}"), hint
        if uri.startswith("http"):
            assert link.startswith("http://mlflow.example:5000/#/"), hint
        else:
            assert hint.startswith(f"mlflow ui --backend-store-uri {uri} "), hint


def test_the_jobs_api_links_runs_as_training_does(in_tmp):
    from services.jobs.ray_jobs import RayJobs
    from services.jobs.settings import JobsSettings

    client = MlflowClient(sqlite_uri(in_tmp))
    experiment_id = client.create_experiment("jobs-links")
    run_id = client.create_run(experiment_id).info.run_id
    settings = JobsSettings(token="t" * 16, tracking_uri=sqlite_uri(in_tmp),
                            mlflow_ui_url="http://mlflow.example:5000")
    jobs = RayJobs(settings, connect=lambda address: None)
    assert jobs._run_url(run_id) == run_link("http://mlflow.example:5000", experiment_id, run_id)
    assert jobs._run_url(run_id).endswith(VIEW)


def test_experiments_are_tagged_as_model_training_and_a_users_tag_stays(in_tmp):
    uri = sqlite_uri(in_tmp)
    client = MlflowClient(uri)
    client.create_experiment("old-untagged")
    client.create_experiment("users-own", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("new", "old-untagged", "users-own"):
        with start_run(name, tracking_uri=uri, system_metrics=False):
            pass
    kinds = {name: client.get_experiment_by_name(name).tags.get(EXPERIMENT_KIND_TAG)
             for name in ("new", "old-untagged", "users-own")}
    assert kinds == {"new": MODEL_TRAINING_KIND, "old-untagged": MODEL_TRAINING_KIND,
                     "users-own": "genai_development"}


# --- the progress bar on a terminal, one line per epoch elsewhere ---------------------------
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stdout, setting, bar", [
    (io.StringIO(), None, False),  # a log file, a pipe, CI: no bar
    (Terminal(), None, True),
    (io.StringIO(), True, True),  # --progress-bar
    (Terminal(), False, False),  # --no-progress-bar
])
def test_progress_bar_by_default_only_on_a_terminal(monkeypatch, tmp_path, stdout, setting, bar):
    from training.running.callbacks import EpochLines, shows_progress_bar
    from training.running.steps import build_trainer
    from training.spec import TrainSpec

    monkeypatch.setattr(sys, "stdout", stdout)
    assert shows_progress_bar(setting) is bar
    spec = TrainSpec(data="digits", accelerator="cpu", progress_bar=setting)
    trainer = build_trainer(spec, callbacks=[], logger=False, root=tmp_path)
    assert (trainer.progress_bar_callback is not None) is bar
    assert any(isinstance(c, EpochLines) for c in trainer.callbacks) is not bar


def test_progress_bar_flag_takes_yes_no_and_defaults_to_auto():
    from training.spec import TrainSpec
    from training.spec.flags import spec_from_args
    from waldo.cli import build_parser

    def parsed(*flags: str) -> TrainSpec:
        return spec_from_args(build_parser().parse_args(["train", *flags]))

    assert parsed().progress_bar is None
    assert parsed("--progress-bar").progress_bar is True
    assert parsed("--no-progress-bar").progress_bar is False


# --- help shows what is used ------------------------------------------------------------------
def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


def flag_help(text: str, flag: str) -> str:
    """The help of one flag, on one line: its entry (a line `  --flag ...`) and the indented
    lines that continue it, up to the next entry."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"  {flag}[ ,]|  {flag}$", line))
    end = start + 1
    while end < len(lines) and lines[end].startswith("   "):  # entries are indented by two
        end += 1
    return " ".join(" ".join(lines[start:end]).split())


def test_compare_help_shows_the_values_compare_uses(capsys):
    from training.commands.compare import SOURCE_EXPERIMENT
    from training.spec import TrainSpec

    text = help_of(capsys, "compare", "mlp")
    for name in ("lr", "batch_size", "epochs", "optimizer", "data"):
        value = SOURCE_EXPERIMENT[name]
        shown = flag_help(text, "--" + name.replace("_", "-"))
        assert f"(default: {value})" in shown, shown
    # and not what `waldo train` would use
    assert TrainSpec().lr != SOURCE_EXPERIMENT["lr"]
    assert f"(default: {TrainSpec().lr})" not in flag_help(text, "--lr")


def test_data_help_names_every_data_set_and_its_default_once(capsys):
    from training.spec.catalog import DATASETS

    shown = flag_help(help_of(capsys, "train"), "--data")
    missing = [name for name in DATASETS if name not in shown]
    assert not missing, shown
    assert shown.count("default") == 1, shown


# --- a failed download leaves nothing behind --------------------------------------------------
@pytest.fixture
def offline(monkeypatch):
    """Every HTTP(S) request goes to a closed port on this machine: a download fails at once."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def load_mnist(**options: Any) -> str:
    from training.data.torchvision_sets import MNISTDataModule

    with pytest.raises(WaldoError) as caught:
        MNISTDataModule(**options).load()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_failed_download_leaves_no_data_folder(in_tmp, offline):
    message = load_mnist(download=True)
    assert "mnist files not found" in message and "download failed" in message, message
    assert list(in_tmp.iterdir()) == []


def test_missing_files_without_download_leave_no_data_folder(in_tmp):
    assert "downloads are off" in load_mnist(download=False)
    assert list(in_tmp.iterdir()) == []


def test_failed_download_keeps_the_users_own_folder(in_tmp, offline):
    mine = in_tmp / "data"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "keep.txt").write_text("mine")
    load_mnist(download=True)
    assert sorted(p.relative_to(in_tmp).as_posix() for p in mine.rglob("*")) == [
        "data/notes", "data/notes/keep.txt"]
    load_mnist(download=True, data_dir=mine)  # the same, named with --data-dir
    assert sorted(p.name for p in mine.iterdir()) == ["notes"]


# --- no MLflow download progress bars ---------------------------------------------------------
def test_exports_download_without_progress_bars_unless_asked(in_tmp, capfd, monkeypatch):
    from training.export.source import RunSource
    from training.spec import TrainSpec

    uri = sqlite_uri(in_tmp)
    with start_run("downloads", tracking_uri=uri, system_metrics=False) as run:
        run.log_text(TrainSpec(data="digits").to_yaml(), "spec.yaml")
    for setting, bars in ((None, False), ("true", True)):
        if setting is None:
            monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
        else:
            monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", setting)
        capfd.readouterr()
        folder = in_tmp / f"downloads-{setting}"
        folder.mkdir()
        assert RunSource(run.run_id, uri).train_spec(folder) is not None
        assert ("Downloading artifacts" in capfd.readouterr().err) is bars


# --- sweeps: a trial the scheduler stopped is not a failure -----------------------------------
@dataclass
class TrialResult:
    """What Ray Tune's ResultGrid holds for one trial, as `_record_trials` reads it."""

    trial_id: str
    epochs: int
    error: BaseException | None = None
    config: dict[str, Any] = field(default_factory=lambda: {"train_loop_config": {"lr": 0.01}})
    metrics_dataframe: Any = None

    @property
    def metrics(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "training_iteration": self.epochs, "val_loss": 0.5}

    @property
    def path(self) -> str:
        return f"/tmp/sweep/_trial_{self.trial_id}_0"


def test_trials_stopped_by_the_scheduler_end_finished(in_tmp):
    from mlflow.entities import RunStatus
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from training.running.sweep import STOPPED_EARLY, STOPPED_EARLY_TAG, _record_trials

    uri = sqlite_uri(in_tmp)
    # How Tune leaves them: a stopped trial's run FAILED on its way out, the others RUNNING.
    left = {"stopped": "FAILED", "completed": "RUNNING", "broken": "RUNNING"}
    grid = [TrialResult("stopped", 1), TrialResult("completed", 4),
            TrialResult("broken", 2, error=RuntimeError("out of memory"))]
    with start_run("sweep", tracking_uri=uri, system_metrics=False) as parent:
        for trial_id, status in left.items():
            child = parent.client.create_run(parent.experiment_id, tags={
                MLFLOW_PARENT_RUN_ID: parent.run_id, "ray.trial_id": trial_id}).info.run_id
            if status != "RUNNING":
                parent.client.set_terminated(child, status)
        trials = _record_trials(parent, grid, epochs=4, monitor="val_loss", mode="min",
                                root=str(in_tmp))
    assert {t["trial_id"]: t["status"] for t in trials} == {
        "stopped": STOPPED_EARLY, "completed": "completed", "broken": "failed"}
    runs = {t["trial_id"]: parent.client.get_run(t["run_id"]) for t in trials}
    assert {k: r.info.status for k, r in runs.items()} == {
        "stopped": RunStatus.to_string(RunStatus.FINISHED), "completed": "FINISHED",
        "broken": "FAILED"}
    assert {k: r.data.tags.get(STOPPED_EARLY_TAG) for k, r in runs.items()} == {
        "stopped": "true", "completed": None, "broken": None}
