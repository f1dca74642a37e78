"""Single-object localization: is there an object, which class, where is its box.

Any registered backbone gets a localization head (`training.models.heads`) whose output, after
activations, is the source's vector y = [p_c, x, y, w, h, p_1..p_K].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy
from torchvision.ops import box_convert, box_iou

from training.losses import localization_loss
from training.models import create_localizer
from training.tasks.base import BaseTask


def xywh_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows of two (N, 4) xywh box tensors."""
    if len(pred) == 0:
        return pred.new_zeros(0)
    a, b = box_convert(pred, "xywh", "xyxy"), box_convert(target, "xywh", "xyxy")
    return box_iou(a, b).diagonal()


class LocalizationTask(BaseTask):
    """Train a localizer. Targets are (B, 5 + K) vectors laid out like the output."""

    task = "localize"
    default_monitor = ("val_loss", "min")

    def __init__(self, *, loss_variant: str = "mse", box_loss: str = "smooth_l1",
                 net: nn.Module | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        h = self.hparams
        if net is None:
            net = create_localizer(h.model_name, num_classes=h.num_classes,
                                   in_channels=h.in_channels, image_size=h.image_size,
                                   **(h.model_args or {}))
        self.net = net
        self.metrics = nn.ModuleDict({
            split: nn.ModuleDict({
                "loss": MeanMetric(),
                "obj_acc": BinaryAccuracy(),
                "cls_acc": MulticlassAccuracy(h.num_classes, average="micro"),
                "iou": MeanMetric(),
                "iou50": MeanMetric(),
            }) for split in ["train_", "val_", "test_"]  # ModuleDict keys can't be "train"
        })

    def _step(self, batch, split: str):
        x, target = batch
        pred = self(x)
        loss = localization_loss(pred, target, variant=self.hparams.loss_variant,
                                 box_loss=self.hparams.box_loss)
        m = self.metrics[split + "_"]
        # Metrics are updated per step and logged once per epoch (see ClassificationTask).
        m["loss"].update(loss.detach(), weight=len(x))
        present = target[:, 0] > 0.5
        m["obj_acc"].update(pred[:, 0], present.long())
        if present.any():
            m["cls_acc"].update(pred[present, 5:], target[present, 5:].argmax(1))
            iou = xywh_iou(pred[present, 1:5].float(), target[present, 1:5].float())
            m["iou"].update(iou)
            m["iou50"].update((iou >= 0.5).float())
        return loss, pred

    def _log_epoch(self, split: str) -> None:
        for name, metric in self.metrics[split + "_"].items():
            if metric.update_count:  # class/IoU metrics see no update in an all-empty epoch
                self.log(f"{split}_{name}", metric.compute(), prog_bar=name in ("loss", "iou"))
            metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch, batch_idx: int):
        return self._step(batch, "val")[1]  # the pictures callback draws these

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")
