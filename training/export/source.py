"""What an export reads: a checkpoint, the record it carries, and the MLflow run it came from.

A run names its best checkpoint through the storage contract (`training.tracking.storage`): the tags
`waldo.best_checkpoint` (its location in storage, a local path or a URI) and
`waldo.best_checkpoint_artifact` (the run artifact holding a copy). The location is read first;
the artifact only when the location cannot be read (a deleted folder, storage this machine does
not reach). Nothing here guesses paths or picks among artifact names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.errors import WaldoError
from training.spec import ExportSpec, TrainSpec, build_spec
from training.tasks import BaseTask, load_task_file
from training.tracking import storage
from training.tracking.runs import read_run


@dataclass(frozen=True)
class CheckpointRecord:
    """The part of a checkpoint that describes it: the task and its saved hyperparameters
    (model_name, num_classes, in_channels, image_size, labels, mean, std, ...), the data
    module's saved state, and the monitored metric with its best value."""

    task: str
    hparams: dict[str, Any]
    data: dict[str, Any] | None = None  # ImageDataModule.state_dict()
    monitor: str | None = None
    best_score: float | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h = self.hparams
        return h["in_channels"], h["image_size"], h["image_size"]  # (C, H, W)

    def best_metric(self) -> dict[str, float]:
        """{monitor: best value}: the validation score of the exported (best) epoch."""
        if self.monitor and self.best_score is not None:
            return {self.monitor: self.best_score}
        return {}


def read_record(path: str | Path) -> CheckpointRecord:
    """The record of a checkpoint that `load_task_file` accepted. Memory-mapped: only these
    small entries are read, not the weights."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    monitor = best = data = None
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and state.get("best_model_score") is not None:
            monitor, best = state.get("monitor"), float(state["best_model_score"])
    for value in checkpoint.values():
        if isinstance(value, dict) and {"name", "labels", "image_size"} <= set(value):
            data = dict(value)  # saved by Lightning under the data module's class name
    return CheckpointRecord(task=checkpoint.get("waldo_task", "classify"),
                            hparams=dict(checkpoint.get("hyper_parameters") or {}),
                            data=data, monitor=monitor, best_score=best)


@dataclass
class Source:
    """A checkpoint to export, loaded, with what is known about where it came from."""

    checkpoint: Path
    task: BaseTask
    record: CheckpointRecord
    run_id: str | None = None
    train_spec: TrainSpec | None = None  # the run's spec.yaml, when it has one
    metrics: dict[str, float] = field(default_factory=dict)  # the run's test metrics, best epoch


def open_source(spec: ExportSpec, tracking_uri: str, downloads: Path) -> Source:
    """The spec's checkpoint file, or its run's best checkpoint (downloaded into `downloads`
    when it is not on this machine)."""
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint)
        task = load_task_file(path)
        record = read_record(path)
        return Source(path, task, record, metrics=record.best_metric())
    run = RunSource(spec.run, tracking_uri)
    path = run.checkpoint(downloads)
    task = load_task_file(path)
    record = read_record(path)
    return Source(path, task, record, spec.run, run.train_spec(downloads),
                  {**run.test_metrics(), **record.best_metric()})


class RunSource:
    """An MLflow run to export: its best-checkpoint record, spec and test metrics."""

    def __init__(self, run_id: str, tracking_uri: str):
        from mlflow.tracking import MlflowClient

        self.run_id, self.uri = run_id, tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.run = read_run(
            self.client, run_id, tracking_uri,
            unknown=f"unknown run {run_id!r}: no such run in the MLflow store at {tracking_uri} "
                    "(see --tracking-uri)",
            unreadable=f"cannot read run {run_id!r} from MLflow at {tracking_uri}")

    def checkpoint(self, downloads: Path) -> Path:
        """A local path to the run's best checkpoint: the recorded storage location, else the
        recorded artifact."""
        try:
            return storage.fetch_best_checkpoint(
                self.run.data.tags, downloads,
                lambda artifact: self.client.download_artifacts(self.run_id, artifact, str(downloads)))
        except LookupError as exc:
            if not str(exc):
                raise WaldoError(
                    f"run {self.run_id} has no checkpoint to export: it records no best checkpoint "
                    f"(neither tag {storage.BEST_CHECKPOINT_TAG} nor "
                    f"{storage.BEST_ARTIFACT_TAG}; runs record them when training finishes)") from None
            raise WaldoError(f"cannot read the best checkpoint of run {self.run_id}: {exc}") from None

    def train_spec(self, downloads: Path) -> TrainSpec | None:
        """The run's spec.yaml as a TrainSpec; None when it has none or an unreadable one."""
        if "spec.yaml" not in {f.path for f in self.client.list_artifacts(self.run_id)}:
            return None
        local = self.client.download_artifacts(self.run_id, "spec.yaml", str(downloads))
        try:
            return build_spec(TrainSpec, local)
        except WaldoError:  # written by another version of Waldo; the checkpoint still says
            return None

    def test_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.run.data.metrics.items() if k.startswith("test_")}
