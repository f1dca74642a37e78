"""`train(spec)`: the one training function, called by the CLI, tests, Ray and Tune alike."""

from __future__ import annotations

import logging
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
)
from pytorch_lightning.loggers import MLFlowLogger
from torchvision.utils import save_image

from training import viz
from training.data import ImageDataModule, create_datamodule
from training.errors import WaldoError
from training.models import get_model_info
from training.spec import TrainSpec
from training.tasks import TASKS, BaseTask, ClassificationTask
from training.tracking import Run, start_run

if TYPE_CHECKING:
    from training.export import ExportResult

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
    best_checkpoint: Path
    metrics: dict[str, float] = field(default_factory=dict)
    ui_hint: str = ""
    export: ExportResult | None = None  # with spec.export: the ONNX version written


def build_task(spec: TrainSpec, dm: ImageDataModule) -> BaseTask:
    """The spec's task around the spec's network, shaped by the data (channels, classes, size)."""
    extra = {"loss_variant": spec.loss_variant, "box_loss": spec.box_loss} if spec.task == "localize" else {}
    return TASKS[spec.task](
        model_name=spec.model, model_args=dict(spec.model_args), num_classes=dm.num_classes,
        in_channels=dm.in_channels, image_size=dm.image_size, labels=dm.labels,
        mean=list(dm.mean), std=list(dm.std),
        optimizer=spec.optimizer, lr=spec.lr, weight_decay=spec.weight_decay,
        momentum=spec.momentum, lr_schedule=spec.lr_schedule, epochs=spec.epochs,
        lr_step_size=spec.lr_step_size, lr_gamma=spec.lr_gamma, channels_last=spec.channels_last,
        **extra,
    )


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
    """The Lightning Trainer for a spec; Ray passes its strategy and plugins as overrides."""
    kwargs = dict(
        max_epochs=spec.epochs, accelerator=spec.accelerator, devices=1,
        precision=spec.precision, logger=logger, callbacks=callbacks,
        enable_progress_bar=spec.progress_bar, enable_model_summary=False,
        log_every_n_steps=1, default_root_dir=root,
    )
    try:
        return pl.Trainer(**{**kwargs, **overrides})
    except (MisconfigurationException, ValueError) as exc:
        raise WaldoError(f"cannot run with accelerator={spec.accelerator!r}, "
                         f"precision={spec.precision!r} here: {exc}") from None


def standard_callbacks(spec: TrainSpec, run: Run, dm: ImageDataModule) -> list[Callback]:
    """Callbacks every run gets, in-process or on Ray: early stopping, pictures, LR, samples."""
    monitor, mode = monitor_of(spec)
    callbacks: list[Callback] = [SamplesPerRank()]
    if spec.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode,
                                       patience=spec.early_stopping_patience))
    if spec.task == "localize":
        callbacks.append(BoxPictures(run, dm))
    if spec.lr_schedule != "none":
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    return callbacks


def prepare(spec: TrainSpec) -> tuple[ImageDataModule, BaseTask]:
    """Seed, load the data and build the task: the first steps of every run, on every rank."""
    pl.seed_everything(spec.seed, workers=True, verbose=False)
    dm = create_datamodule(spec)
    dm.setup("fit")  # the network's shape depends on the data: channels, classes, size
    return dm, build_task(spec, dm)


def default_run_name(spec: TrainSpec) -> str:
    # uuid4 draws from the OS, not from `random`, which seeding makes repeat across runs.
    return spec.run_name or f"{spec.model}-{spec.data}-{uuid.uuid4().hex[:6]}"


def train(
    spec: TrainSpec, *, callbacks: Sequence[Callback] = (), parent_run_id: str | None = None
) -> TrainResult:
    """Fit the spec's network on its data, test the best checkpoint, and track it all in MLflow.

    MLflow gets the spec as params, per-epoch train/val loss and accuracy, test metrics, the
    best checkpoint, the resolved spec, and learning-curve, confusion-matrix and filter plots.
    With `spec.workers > 0` the same steps run as a Ray Train job (`training.distributed`).
    """
    if spec.workers > 0:
        from training.distributed import train_distributed

        return export_if_asked(spec, train_distributed(spec, callbacks=callbacks,
                                                       parent_run_id=parent_run_id))
    run_name = default_run_name(spec)
    get_model_info(spec.model)  # fail on a bad name before loading any data
    monitor, mode = monitor_of(spec)
    dm, task = prepare(spec)

    tags = {"waldo.task": spec.task, "waldo.model": spec.model, "waldo.data": spec.data}
    with start_run(spec.experiment, run_name=run_name, tracking_uri=spec.tracking_uri,
                   parent_run_id=parent_run_id, tags=tags) as run:
        run.log_params(spec.to_params())
        run.log_text(spec.to_yaml(), "spec.yaml")
        root = Path(spec.storage or "waldo_runs") / run.run_id
        checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", filename="best",
                                     monitor=monitor, mode=mode, save_last=True)
        all_callbacks = [checkpoint, *callbacks, *standard_callbacks(spec, run, dm)]
        logger = MLFlowLogger(experiment_name=spec.experiment, tracking_uri=run.tracking_uri,
                              run_id=run.run_id, log_model=True)
        trainer = build_trainer(spec, callbacks=all_callbacks, logger=logger, root=root)
        trainer.fit(task, datamodule=dm)
        trainer.test(task, datamodule=dm, ckpt_path="best", verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        log_pictures(run, task, dm)
    return export_if_asked(spec, TrainResult(run.run_id, run.experiment_id, run.tracking_uri,
                                             Path(checkpoint.best_model_path), metrics,
                                             run.ui_hint))


def export_if_asked(spec: TrainSpec, result: TrainResult) -> TrainResult:
    """With `spec.export` (or `register`, or `alias`), export the closed run's best checkpoint
    to ONNX, check it and register it (`training.export.export_run`)."""
    # `is True`: a spec subclass that does not redeclare `register` inherits ABCMeta.register
    # (a method, so truthy) as its default; see SweepSpec.
    register = spec.register is True
    if not (spec.export is True or register or spec.alias):
        return result
    from training.export import export_run

    local = result.best_checkpoint if result.best_checkpoint.is_file() else None
    try:
        result.export = export_run(result.run_id, checkpoint=local, spec=spec,
                                   tracking_uri=result.tracking_uri, register=register,
                                   alias=spec.alias)
    except WaldoError as exc:
        raise WaldoError(f"run {result.run_id} trained, but its export failed: {exc}; "
                         f"retry with `waldo export --run {result.run_id}`") from None
    return result


def log_pictures(run: Run, task: BaseTask, dm: ImageDataModule) -> None:
    """Learning curves, test confusion matrix and first-layer filters, as PNG artifacts."""
    if isinstance(task, ClassificationTask):
        keys, loss_name = ["train_acc", "val_acc"], "cross-entropy"
    else:
        keys = ["val_obj_acc", "val_cls_acc", "val_iou", "val_iou50"]
        loss_name = f"localization loss ({task.hparams.loss_variant})"
    history = {k: run.metric_history(k) for k in ["train_loss", "val_loss", *keys]}
    run.log_figure(viz.learning_curves(history, loss_name), "learning_curves.png")
    if isinstance(task, ClassificationTask) and task.test_confusion is not None:
        run.log_figure(viz.confusion_matrix(task.test_confusion, dm.labels), "confusion_matrix.png")
    grid = viz.filter_grid(task.net)
    if grid is not None:
        run.log_image_file(lambda path: save_image(grid, path), "first_layer_filters.png")


class SamplesPerRank(Callback):
    """Log how many training images each rank saw per epoch (`train_samples_rank{r}`), so a
    distributed run shows that every worker really trained."""

    def __init__(self):
        self.count = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.count = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.count += len(batch[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        counts = trainer.strategy.all_gather(torch.tensor(self.count, device=pl_module.device))
        if trainer.is_global_zero and trainer.logger is not None:
            values = counts.reshape(-1).tolist()
            trainer.logger.log_metrics({f"train_samples_rank{r}": float(v)
                                        for r, v in enumerate(values)}, step=trainer.global_step)


class BoxPictures(Callback):
    """Every validation epoch, log a grid of validation images with true (green) and
    predicted (red) boxes and labels, as `boxes/epoch_NNN.png`."""

    def __init__(self, run: Run, dm: ImageDataModule, count: int = 16):
        self.run, self.dm, self.count = run, dm, count
        self._batch = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        if batch_idx == 0 and outputs is not None:
            x, target = batch
            n = self.count
            self._batch = (x[:n].detach().float().cpu(), target[:n].cpu(), outputs[:n].float().cpu())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._batch is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        grid = viz.box_grid(*self._batch, mean=self.dm.mean, std=self.dm.std, labels=self.dm.labels)
        name = f"epoch_{trainer.current_epoch:03d}.png"
        self.run.log_image_file(lambda path: save_image(grid, path), name, artifact_path="boxes")
        self._batch = None
