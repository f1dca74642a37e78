"""What every task shares: the network from the registry, the optimizer, the memory format,
and hyperparameters that rebuild it all from a checkpoint (and from which export writes the
ModelCard, in `training.export.card`)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import nn

from training.tasks.optim import build_optimizers


class BaseTask(pl.LightningModule):
    """Subclasses set `task` and `default_monitor` and build `self.net`.

    The hyperparameters hold the network's name and arguments and the data's labels and
    normalization, so `load_from_checkpoint(path)` rebuilds everything with no config file.
    """

    task: ClassVar[str] = ""
    default_monitor: ClassVar[tuple[str, str]] = ("val_loss", "min")  # (metric, mode)

    def __init__(
        self,
        *,
        model_name: str,
        num_classes: int,
        in_channels: int,
        image_size: int,
        model_args: dict[str, Any] | None = None,
        labels: list[str] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        lr_schedule: str = "none",
        epochs: int = 10,
        lr_step_size: int = 10,
        lr_gamma: float = 0.1,
        channels_last: bool = False,
        warmup_epochs: int = 0,
        compile: bool = False,
        provenance: dict[str, str] | None = None,
    ):
        super().__init__()
        # `provenance`: where the network's first weights came from (pretrained weights or an
        # earlier run, see `training.running.init_from`); export copies it into the ModelCard.
        # Collects the subclass's arguments too. The spec is logged as the run's params, so
        # these are only for rebuilding from a checkpoint, not for the logger.
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.example_input_array = torch.zeros(1, in_channels, image_size, image_size)
        # `--compile`: torch.compile's wrapper of `net`, kept out of the module tree so that
        # checkpoints, EMA and export see the plain network's parameter names.
        self._compiled: nn.Module | None = None

    def forward(self, x: torch.Tensor):
        net = self._compiled if self._compiled is not None else self.net
        return net(x.contiguous(memory_format=self.memory_format))

    def setup(self, stage: str) -> None:
        self.net.to(memory_format=self.memory_format)
        if self.hparams.get("compile") and self._compiled is None:
            object.__setattr__(self, "_compiled", torch.compile(self.net))

    def configure_optimizers(self):
        h = self.hparams
        # Only a schedule that steps per optimizer step needs the count (it loads the data).
        per_step = h.lr_schedule == "onecycle" or h.get("warmup_epochs", 0)
        steps = (self.trainer.estimated_stepping_batches if per_step and self._trainer is not None
                 else h.epochs)
        # Frozen parameters (`training.running.finetune`) stay out; unfreezing adds them as a group.
        return build_optimizers(
            [p for p in self.parameters() if p.requires_grad], optimizer=h.optimizer, lr=h.lr,
            weight_decay=h.weight_decay,
            momentum=h.momentum, lr_schedule=h.lr_schedule, epochs=h.epochs,
            lr_step_size=h.lr_step_size, lr_gamma=h.lr_gamma,
            warmup_epochs=h.get("warmup_epochs", 0), steps_per_epoch=int(steps) // h.epochs,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["waldo_task"] = self.task  # lets `load_task` pick the class


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
