"""Image classification: any registered network, cross-entropy, accuracy."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from training.models import create_model
from training.tasks.optim import build_optimizers

# GoogLeNet's auxiliary classifiers count 0.3 each in the loss (Szegedy et al., 2014).
AUX_LOSS_WEIGHT = 0.3


class ClassificationTask(pl.LightningModule):
    """Train a classifier. The checkpoint stores the network's name and arguments, so
    `ClassificationTask.load_from_checkpoint(path)` rebuilds it with no config file."""

    def __init__(
        self,
        *,
        model_name: str,
        num_classes: int,
        in_channels: int,
        image_size: int,
        model_args: dict[str, Any] | None = None,
        labels: list[str] | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        lr_schedule: str = "none",
        epochs: int = 10,
        lr_step_size: int = 10,
        lr_gamma: float = 0.1,
        channels_last: bool = False,
        net: nn.Module | None = None,
    ):
        super().__init__()
        # The spec is logged as the run's params; the hparams are for rebuilding from a checkpoint.
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net if net is not None else create_model(
            model_name, num_classes=num_classes, in_channels=in_channels,
            image_size=image_size, **(model_args or {}),
        )
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.example_input_array = torch.zeros(1, in_channels, image_size, image_size)
        self.train_acc = MulticlassAccuracy(num_classes)
        self.val_acc = MulticlassAccuracy(num_classes)
        self.test_acc = MulticlassAccuracy(num_classes)
        self.test_confmat = MulticlassConfusionMatrix(num_classes)
        self.test_confusion: torch.Tensor | None = None  # (K, K) counts after `trainer.test`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=self.memory_format))

    def setup(self, stage: str) -> None:
        self.net.to(memory_format=self.memory_format)

    def _loss(self, out, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(out, tuple):  # GoogLeNet with aux classifiers: (logits, aux2, aux1)
            logits, *aux = out
            loss = F.cross_entropy(logits, y)
            loss = loss + AUX_LOSS_WEIGHT * sum(F.cross_entropy(a, y) for a in aux)
            return loss, logits
        return F.cross_entropy(out, y), out

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, logits = self._loss(self(x), y)
        self.train_acc(logits, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.test_confmat.update(logits, y)
        self.log("test_loss", F.cross_entropy(logits, y))
        self.log("test_acc", self.test_acc)

    def on_test_epoch_end(self) -> None:
        self.test_confusion = self.test_confmat.compute().cpu()
        self.test_confmat.reset()

    def configure_optimizers(self):
        h = self.hparams
        return build_optimizers(
            self.parameters(), optimizer=h.optimizer, lr=h.lr, weight_decay=h.weight_decay,
            momentum=h.momentum, lr_schedule=h.lr_schedule, epochs=h.epochs,
            lr_step_size=h.lr_step_size, lr_gamma=h.lr_gamma,
        )
