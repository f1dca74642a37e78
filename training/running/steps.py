"""The steps every training run takes, shared by the in-process runner (`training.running.local`) and
the Ray runner (`training.running.distributed`): seed and load the data, build the task around the
network, build the Lightning Trainer and its callbacks, open the MLflow run, and log the
pictures at the end. Neither runner imports the other; both import this.
"""

from __future__ import annotations

import logging
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor
from pytorch_lightning.loggers import MLFlowLogger

from training.data import ImageDataModule, create_datamodule, describe_data
from training.data.leakage import MAX_SHARE
from training.errors import WaldoError
from training.running.callbacks import (
    BoxPictures,
    EpochFacts,
    EpochLines,
    StopOnNonFinite,
    WeightEMA,
    shows_progress_bar,
)
from training.running.init_from import Start, starting_point
from training.spec import TrainSpec
from training.tasks import TASKS, BaseTask, ClassificationTask
from training.tracking import explain, storage, viz
from training.tracking.runs import Run, absolute_tracking_uri, start_run, uninterrupted

if TYPE_CHECKING:
    from training.export import ExportResult

log = logging.getLogger("waldo.data")
SPLIT_OVERLAP_TAG = "waldo.split_overlap"  # test images also in train or val, by content

# Lightning's advice about DataLoader workers does not apply to in-memory tensors.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")


class _NoTips(logging.Filter):
    """Drop Lightning's advertisements for its cloud products from the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoTips())


@dataclass
class TrainResult:
    run_id: str
    experiment_id: str
    tracking_uri: str
    best_checkpoint: str  # its location in storage: a local path or a URI (s3://...)
    metrics: dict[str, float] = field(default_factory=dict)
    ui_hint: str = ""
    export: ExportResult | None = None  # set by `training.running.pipeline` when the spec exports


def resolve_locations(spec: Any) -> Any:
    """The spec with its tracking URI, storage and data folder made absolute. Ray workers and
    Tune trials run in working folders of their own, where `./mlflow.db`, `./waldo_runs` or
    `./data` would name other places than the ones the user meant, so this happens before
    anything starts. The storage is checked here too: it must take a write."""
    update = {"tracking_uri": absolute_tracking_uri(spec.tracking_uri),
              "storage": storage.storage_root(spec.storage)}
    storage.check_writable(update["storage"])  # a missing bucket or a file: now, not at a checkpoint
    if spec.data_dir is not None and not storage.is_remote(spec.data_dir):
        update["data_dir"] = str(Path(spec.data_dir).expanduser().resolve())
    return spec.model_copy(update=update)


def check_split_overlap(spec: TrainSpec, dm: ImageDataModule) -> None:
    """The leakage guard, before a run starts: a data module that compared its splits by
    content (`training.data.leakage`) and found more than MAX_SHARE of its test images in
    train or val stops the run with one line, unless the spec allows it; otherwise the overlap
    is a warning."""
    overlap = dm.split_overlap
    if overlap is None:
        return
    if overlap.share > MAX_SHARE and not spec.allow_split_overlap:
        raise WaldoError(f"{overlap.describe()}: test metrics would count remembered images; "
                         "remove the copies or links from the data, or pass --allow-split-overlap "
                         "(allow_split_overlap: true) to train anyway")
    if overlap.in_test:
        allowed = " (allowed: allow_split_overlap)" if overlap.share > MAX_SHARE else ""
        log.warning("%s%s", overlap.describe(), allowed)
    if overlap.val_in_train:
        log.warning("%d of %d val images also lie in train (the same bytes): validation metrics "
                    "and the best checkpoint lean on remembered images", overlap.val_in_train,
                    overlap.val)


def split_overlap_tags(dm: ImageDataModule) -> dict[str, str]:
    """The run's record of the guard: how many test images are also in train or val
    (`waldo.split_overlap`), for data whose splits were compared."""
    return {} if dm.split_overlap is None else {SPLIT_OVERLAP_TAG: str(dm.split_overlap.in_test)}


def build_task(spec: TrainSpec, dm: ImageDataModule, start: Start | None = None) -> BaseTask:
    """The spec's task around the spec's network, shaped by the data (channels, classes, size),
    starting from `start`'s weights when given (its provenance goes into the hyperparameters,
    so the checkpoint and the exported ModelCard carry it)."""
    if spec.task == "localize":
        extra: dict[str, Any] = {"loss_variant": spec.loss_variant, "box_loss": spec.box_loss}
    else:
        extra = {"label_smoothing": spec.label_smoothing, "mixup_alpha": spec.mixup_alpha,
                 "cutmix_alpha": spec.cutmix_alpha}
    if start is not None:
        extra["provenance"] = dict(start.provenance)
    task = TASKS[spec.task](
        model_name=spec.model, model_args={**spec.model_args, **(start.model_args if start else {})},
        num_classes=dm.num_classes,
        in_channels=dm.in_channels, image_size=dm.image_size, labels=dm.labels,
        mean=list(dm.mean), std=list(dm.std),
        optimizer=spec.optimizer, lr=spec.lr, weight_decay=spec.weight_decay,
        momentum=spec.momentum, lr_schedule=spec.lr_schedule, epochs=spec.epochs,
        lr_step_size=spec.lr_step_size, lr_gamma=spec.lr_gamma, channels_last=spec.channels_last,
        warmup_epochs=spec.warmup_epochs, compile=spec.compile, **extra,
    )
    if start is not None:
        start.load_into(task.net, task=spec.task, labels=dm.labels,
                        source=f"--weights {spec.weights}" if spec.weights else
                        f"--init-from {spec.init_from}")
    return task


def monitor_of(spec: TrainSpec) -> tuple[str, str]:
    """(metric, mode) that picks the best checkpoint and drives early stopping."""
    metric, mode = TASKS[spec.task].default_monitor
    if spec.monitor:
        metric = spec.monitor
        mode = "min" if metric.endswith("loss") else "max"
        if not metric.startswith("val_"):
            raise WaldoError(f"monitor {metric!r} must be a validation metric (val_...), "
                             f"e.g. {TASKS[spec.task].default_monitor[0]}")
    return metric, mode


def build_trainer(spec: TrainSpec, *, callbacks: list[Callback], logger, root: Path | str,
                  **overrides) -> pl.Trainer:
    """The Lightning Trainer for a spec; Ray passes its strategy and plugins as overrides.
    Without a progress bar (`shows_progress_bar`: none unless stdout is a terminal), each epoch
    prints one line (`EpochLines`)."""
    bar = overrides.get("enable_progress_bar", shows_progress_bar(spec.progress_bar))
    kwargs = dict(
        max_epochs=spec.epochs, accelerator=spec.accelerator, devices=1,
        precision=spec.precision, logger=logger,
        callbacks=list(callbacks) if bar else [*callbacks, EpochLines()],
        enable_progress_bar=bar, enable_model_summary=False,
        log_every_n_steps=50, default_root_dir=root,  # nothing is logged per step: epochs only
        gradient_clip_val=spec.grad_clip, accumulate_grad_batches=spec.accumulate_grad_batches,
        benchmark=True,  # cuDNN picks the fastest convolution algorithms for the fixed shapes
    )
    try:
        return pl.Trainer(**{**kwargs, **overrides})
    except (MisconfigurationException, ValueError) as exc:
        raise WaldoError(f"cannot run with accelerator={spec.accelerator!r}, "
                         f"precision={spec.precision!r} here: {exc}") from None


def standard_callbacks(spec: TrainSpec, run: Run, dm: ImageDataModule) -> list[Callback]:
    """Callbacks every run gets, in-process or on Ray: early stopping, pictures, LR, samples,
    and the count of unreadable files the data module skipped (`data_skipped_images`)."""
    monitor, mode = monitor_of(spec)

    def log_skipped(trainer: pl.Trainer, _: pl.LightningModule) -> None:
        # The user's files that the data module found unreadable and left out (rank 0 logs).
        if trainer.is_global_zero:
            run.log_metrics({"data_skipped_images": len(dm.skipped_images)})
            if dm.skipped_images:
                run.log_text("\n".join(dm.skipped_images) + "\n", "skipped_images.txt")

    def log_data(trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # What went in, as the run's MLflow dataset input: source, digest, split sizes.
        log_skipped(trainer, module)
        if trainer.is_global_zero:
            facts = describe_data(dm)
            run.log_dataset(facts.name, source=facts.source, digest=facts.digest, sizes=facts.sizes)

    # First: a nan or inf loss stops the run before a checkpoint callback saves its weights.
    callbacks: list[Callback] = [StopOnNonFinite(advice=f"lower --lr (it was {spec.lr:g})"),
                                 EpochFacts(at_fit_start=log_data)]
    if spec.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode,
                                       patience=spec.early_stopping_patience))
    if spec.task == "localize":
        callbacks.append(BoxPictures(run, dm))
    if spec.lr_schedule != "none" or spec.warmup_epochs:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if spec.ema_decay is not None:
        # Validation, the best checkpoint, testing and so export all see the averaged weights.
        callbacks.append(WeightEMA(decay=spec.ema_decay))
    return callbacks


def prepare(spec: TrainSpec, dm: ImageDataModule | None = None) -> tuple[ImageDataModule, BaseTask]:
    """Seed, load the data and build the task: the first steps of every run, on every rank.
    `dm` is the data module to use instead of the spec's own (a Ray worker fed by Ray Data)."""
    pl.seed_everything(spec.seed, workers=True, verbose=False)
    dm = dm if dm is not None else create_datamodule(spec.data_spec())
    dm.setup("fit")  # the network's shape depends on the data: channels, classes, size
    check_split_overlap(spec, dm)  # a Ray worker's data module has none: its driver checked
    start = starting_point(spec, in_channels=dm.in_channels)
    if start is not None and start.mean is not None:
        # The one place the data's normalization is overridden: the start's (the weights'
        # ImageNet statistics, or the source run's) feeds the batch transform, and through
        # `build_task` the hyperparameters, from which export writes the ModelCard.
        dm.normalize_with(start.mean, start.std)
    return dm, build_task(spec, dm, start)


def default_run_name(spec: TrainSpec) -> str:
    # uuid4 draws from the OS, not from `random`, which seeding makes repeat across runs.
    return spec.run_name or f"{spec.model}-{spec.data}-{uuid.uuid4().hex[:6]}"


@contextmanager
def open_run(spec: TrainSpec, name: str, *, parent_run_id: str | None = None,
             run_id: str | None = None, tags: dict[str, Any] | None = None,
             params: dict[str, str] | None = None) -> Iterator[Run]:
    """The job's MLflow run, tagged with what it trains; a new run logs the spec and `params`
    (e.g. `provenance_params(task)`) as params and `spec.yaml`, a reopened one (`run_id`, a
    resumed job) keeps what it has."""
    all_tags = {"waldo.task": spec.task, "waldo.model": spec.model, "waldo.data": spec.data,
                **(tags or {})}
    with start_run(spec.experiment, run_name=name, tracking_uri=spec.tracking_uri,
                   parent_run_id=parent_run_id, tags=all_tags, run_id=run_id) as run:
        if run_id is None:
            run.log_params({**spec.to_params(), **(params or {})})
            run.log_text(spec.to_yaml(), "spec.yaml")
        yield run


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger, writing into a run that `open_run` opened and will close.

    Its writes to the tracking store are `uninterrupted`. Its `finalize` leaves the run's status
    alone: Lightning's own ends the run FINISHED when `fit` returns (before the test, the
    pictures and the checkpoint artifact) and FAILED on Ctrl-C, where the run's owner writes
    KILLED; a write it made after an interrupt could also fail on a locked SQLite store and
    print a traceback from Lightning's shutdown."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        with uninterrupted():
            super().log_metrics(metrics, step)

    def log_hyperparams(self, params: Any) -> None:
        with uninterrupted():
            super().log_hyperparams(params)

    def finalize(self, status: str = "success") -> None:
        """Nothing: `open_run` closes the run, with its real outcome."""


def run_logger(spec: TrainSpec, run: Run) -> RunLogger:
    """The Lightning logger of `run`, on any rank (rank 0 alone writes)."""
    return RunLogger(experiment_name=spec.experiment, tracking_uri=run.tracking_uri,
                     run_id=run.run_id)


def provenance_params(task: BaseTask) -> dict[str, str]:
    """Where the task's network started, as run params: weights.name/url/path/sha256 or
    init_from.run_id/model_uri/checkpoint; empty for random weights."""
    return dict(task.hparams.get("provenance") or {})


def log_pictures(run: Run, task: BaseTask, dm: ImageDataModule) -> None:
    """Learning curves and the test confusion matrix, then what the network looks at
    (`training.tracking.explain`: first-layer filters, feature maps, Grad-CAM, the worst
    mistakes), as PNG artifacts. Drawing never fails a run: a failure is one warning line."""
    try:
        _log_curves(run, task, dm)
    except Exception as exc:
        logging.getLogger("waldo.pictures").warning(
            "learning curves not logged for run %s: %s", run.run_id, " ".join(str(exc).split()))
    explain.log_run_pictures(run, task, dm)


def _log_curves(run: Run, task: BaseTask, dm: ImageDataModule) -> None:
    if isinstance(task, ClassificationTask):
        keys, loss_name = ["train_acc", "val_acc"], "cross-entropy"
    else:
        keys = ["val_obj_acc", "val_cls_acc", "val_iou", "val_iou50"]
        loss_name = f"localization loss ({task.hparams.loss_variant})"
    history = {k: run.metric_history(k) for k in ["train_loss", "val_loss", *keys]}
    run.log_figure(viz.learning_curves(history, loss_name), "learning_curves.png")
    if isinstance(task, ClassificationTask) and task.test_confusion is not None:
        run.log_figure(viz.confusion_matrix(task.test_confusion, dm.labels), "confusion_matrix.png")


__all__ = ["SPLIT_OVERLAP_TAG", "BoxPictures", "EpochFacts", "RunLogger", "TrainResult",
           "build_task", "build_trainer", "check_split_overlap", "default_run_name", "log_pictures",
           "monitor_of", "open_run", "prepare", "provenance_params", "resolve_locations",
           "run_logger", "split_overlap_tags", "standard_callbacks"]
