"""`train(spec)`: the one training function, called by the CLI, tests, Ray and Tune alike."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
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
from training.spec import TrainSpec
from training.tasks import ClassificationTask
from training.tracking import Run, start_run

# Lightning's advice about DataLoader workers does not apply to in-memory tensors.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")


@dataclass
class TrainResult:
    run_id: str
    experiment_id: str
    tracking_uri: str
    best_checkpoint: Path
    metrics: dict[str, float] = field(default_factory=dict)
    ui_hint: str = ""


def build_task(spec: TrainSpec, dm: ImageDataModule) -> ClassificationTask:
    return ClassificationTask(
        model_name=spec.model, model_args=dict(spec.model_args), num_classes=dm.num_classes,
        in_channels=dm.in_channels, image_size=dm.image_size, labels=dm.labels,
        optimizer=spec.optimizer, lr=spec.lr, weight_decay=spec.weight_decay,
        momentum=spec.momentum, lr_schedule=spec.lr_schedule, epochs=spec.epochs,
        lr_step_size=spec.lr_step_size, lr_gamma=spec.lr_gamma, channels_last=spec.channels_last,
    )


def build_trainer(spec: TrainSpec, *, callbacks: list[Callback], logger, root: Path) -> pl.Trainer:
    try:
        return pl.Trainer(
            max_epochs=spec.epochs, accelerator=spec.accelerator, devices=1,
            precision=spec.precision, logger=logger, callbacks=callbacks,
            enable_progress_bar=spec.progress_bar, enable_model_summary=False,
            log_every_n_steps=1, default_root_dir=root,
        )
    except (MisconfigurationException, ValueError) as exc:
        raise WaldoError(f"cannot run with accelerator={spec.accelerator!r}, "
                         f"precision={spec.precision!r} here: {exc}") from None


def train(
    spec: TrainSpec, *, callbacks: Sequence[Callback] = (), parent_run_id: str | None = None
) -> TrainResult:
    """Fit the spec's network on its data, test the best checkpoint, and track it all in MLflow.

    MLflow gets the spec as params, per-epoch train/val loss and accuracy, test metrics, the
    best checkpoint, the resolved spec, and learning-curve, confusion-matrix and filter plots.
    """
    pl.seed_everything(spec.seed, workers=True, verbose=False)
    dm = create_datamodule(spec)
    dm.setup("fit")  # the network's shape depends on the data: channels, classes, size
    task = build_task(spec, dm)

    tags = {"waldo.task": spec.task, "waldo.model": spec.model, "waldo.data": spec.data}
    with start_run(spec.experiment, run_name=spec.run_name, tracking_uri=spec.tracking_uri,
                   parent_run_id=parent_run_id, tags=tags) as run:
        run.log_params(spec.to_params())
        run.log_text(spec.to_yaml(), "spec.yaml")
        root = Path(spec.storage or "waldo_runs") / run.run_id
        checkpoint = ModelCheckpoint(
            dirpath=root / "checkpoints", filename="best", monitor=spec.monitor,
            mode="max" if spec.monitor.endswith("acc") else "min", save_last=True,
        )
        all_callbacks: list[Callback] = [checkpoint, *callbacks]
        if spec.early_stopping_patience:
            all_callbacks.append(EarlyStopping(
                monitor=spec.monitor, patience=spec.early_stopping_patience,
                mode="max" if spec.monitor.endswith("acc") else "min",
            ))
        if spec.lr_schedule != "none":
            all_callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        logger = MLFlowLogger(experiment_name=spec.experiment, tracking_uri=run.tracking_uri,
                              run_id=run.run_id, log_model=True)
        trainer = build_trainer(spec, callbacks=all_callbacks, logger=logger, root=root)
        trainer.fit(task, datamodule=dm)
        trainer.test(task, datamodule=dm, ckpt_path="best", verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        log_pictures(run, task, dm)
    return TrainResult(run.run_id, run.experiment_id, run.tracking_uri,
                       Path(checkpoint.best_model_path), metrics, run.ui_hint)


def log_pictures(run: Run, task: ClassificationTask, dm: ImageDataModule) -> None:
    """Learning curves, test confusion matrix and first-layer filters, as PNG artifacts."""
    history = {k: run.metric_history(k) for k in ["train_loss", "val_loss", "train_acc", "val_acc"]}
    run.log_figure(viz.learning_curves(history), "learning_curves.png")
    if task.test_confusion is not None:
        run.log_figure(viz.confusion_matrix(task.test_confusion, dm.labels), "confusion_matrix.png")
    grid = viz.filter_grid(task.net)
    if grid is not None:
        run.log_image_file(lambda path: save_image(grid, path), "first_layer_filters.png")
