"""Image classification: any registered network, cross-entropy, accuracy; the recipe's
label smoothing, and mixup or cutmix on each training batch (torchvision's v2.MixUp and
v2.CutMix, on the batch's device)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchvision.transforms import v2

from training.models import create_model
from training.tasks.base import BaseTask

# GoogLeNet's auxiliary classifiers count 0.3 each in the loss (Szegedy et al., 2014).
AUX_LOSS_WEIGHT = 0.3


class ClassificationTask(BaseTask):
    """Train a classifier; `forward` returns logits (B, K)."""

    task = "classify"
    default_monitor = ("val_loss", "min")

    def __init__(self, *, label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, net: nn.Module | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        h = self.hparams
        self.net = net if net is not None else create_model(
            h.model_name, num_classes=h.num_classes, in_channels=h.in_channels,
            image_size=h.image_size, **(h.model_args or {}),
        )
        k = h.num_classes
        # The epoch's training loss and accuracy are sums on the batch's device (loss x images,
        # correct images), reduced over ranks once per epoch: a step adds them in three tensor
        # ops, where torchmetrics' MeanMetric and MulticlassAccuracy updates cost ~50 us of
        # argument checks and state handling per step on the CPU (hundreds in a real step).
        self.register_buffer("_train_sums", torch.zeros(2), persistent=False)
        self._train_images = 0
        self.val_acc = MulticlassAccuracy(k, average="micro")
        self.test_acc = MulticlassAccuracy(k, average="micro")
        self.test_confmat = MulticlassConfusionMatrix(k)
        self.test_confusion: torch.Tensor | None = None  # (K, K) counts after `trainer.test`
        mixers = [cls(alpha=alpha, num_classes=k) for cls, alpha in
                  ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha)) if alpha > 0]
        # With both, each batch gets one of the two (as in torchvision's reference recipe).
        self.mix = v2.RandomChoice(mixers) if len(mixers) > 1 else (mixers[0] if mixers else None)

    def _loss(self, out, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss against class indices or, after mixing, class probabilities (B, K)."""
        smoothing = self.hparams.get("label_smoothing", 0.0)
        if isinstance(out, tuple):  # GoogLeNet with aux classifiers: (logits, aux2, aux1)
            logits, *aux = out
            loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
            loss = loss + AUX_LOSS_WEIGHT * sum(F.cross_entropy(a, y, label_smoothing=smoothing)
                                                for a in aux)
            return loss, logits
        return F.cross_entropy(out, y, label_smoothing=smoothing), out

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        # Accuracy is counted against each image's own class, also when it was mixed.
        x, target = self.mix(x, y) if self.mix is not None else (x, y)
        loss, logits = self._loss(self(x), target)
        # Only accumulate here and log once per epoch: on CPU, a `self.log` per step costs about
        # as much as a forward pass of the small networks.
        n = len(y)
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == y).sum()
            self._train_sums.add_(torch.stack((loss.detach().float() * n, correct.float())))
        self._train_images += n
        return loss

    def on_train_epoch_end(self) -> None:
        totals = torch.cat((self._train_sums, self._train_sums.new_tensor([self._train_images])))
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")  # all ranks' images
        images = totals[2].clamp_min(1)
        self.log("train_loss", totals[0] / images, prog_bar=True)
        self.log("train_acc", totals[1] / images, prog_bar=True)
        self._train_sums.zero_()
        self._train_images = 0

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
