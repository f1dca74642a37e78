"""Tasks, data modules and Trainers for the tests that build them directly (not through
`train()`): the same small objects for the unit tests and their integration counterparts.

Imported as `support.tasks`, not re-exported from `support`, so tests that need no torch do not
pay for it."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from training.data.digits import DigitsDataModule
from training.data.localization import LocalizationDigitsDataModule
from training.tasks import ClassificationTask, LocalizationTask


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A CPU Trainer that logs, checkpoints and prints nothing."""
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def digits_module(batch_size: int = 32) -> DigitsDataModule:
    """scikit-learn's digits, set up."""
    dm = DigitsDataModule(batch_size=batch_size)
    dm.setup("fit")
    return dm


def canvas_module() -> LocalizationDigitsDataModule:
    """A small localization-digits set (64 training canvases, 32 per evaluation split), set up."""
    dm = LocalizationDigitsDataModule(train_size=64, eval_size=32, batch_size=16)
    dm.setup("fit")
    return dm


def classification_task(dm, model: str, image_size: int | None = None,
                        **kwargs) -> ClassificationTask:
    """A classifier shaped by `dm` (channels, classes, labels)."""
    return ClassificationTask(model_name=model, num_classes=dm.num_classes,
                              in_channels=dm.in_channels, image_size=image_size or dm.image_size,
                              labels=dm.labels, **kwargs)


def localization_task(dm, model: str = "cnn", **kwargs) -> LocalizationTask:
    """A localizer shaped by `dm`, with its normalization."""
    return LocalizationTask(model_name=model, num_classes=dm.num_classes,
                            in_channels=dm.in_channels, image_size=dm.image_size,
                            labels=dm.labels, mean=list(dm.mean), std=list(dm.std), **kwargs)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class BatchDependent(nn.Module):
    """Python control flow on the batch size: tracing at batch 2 freezes the other branch, so
    the ONNX file is wrong at batch 1. The classic way a traced export goes silently wrong."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y + 1.0 if x.shape[0] == 1 else y
