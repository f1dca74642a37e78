"""Heads that reuse any registered backbone through `forward_features`.

The backbone is built with `num_classes=0`, so a head never carries an unused classifier
(VGG-16's is 119.6M parameters, AlexNet's 58.6M).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.errors import WaldoError
from training.models._api import create_model

# Feature maps are pooled to at most this side before the dense head: enough spatial detail
# for the box, and a head whose size does not grow with the input.
MAX_GRID = 8

# Where the registered families keep their classifier (see `Localizer._drop_old_classifier`).
_CLASSIFIER_NAMES = ("classifier", "fc", "head")


class Localizer(nn.Module):
    """Single-object localization: a backbone's features -> pooled grid -> MLP -> activated
    (B, 5 + K) vector y = [p_c, x, y, w, h, p_1..p_K] (sigmoid on the first five, softmax on
    the class scores), the layout of the source material's localization example."""

    def __init__(self, backbone: nn.Module, *, num_classes: int, in_channels: int,
                 image_size: int, hidden: int = 256):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        with torch.no_grad():  # one dry run tells the feature shape
            was_training = backbone.training
            f = backbone.eval().forward_features(torch.zeros(1, in_channels, image_size, image_size))
            backbone.train(was_training)
        if f.ndim == 4:  # (1, C, h, w)
            side = min(f.shape[-1], MAX_GRID)
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(side)
            flat = f.shape[1] * side * side
        else:  # (1, F) from a dense backbone
            self.pool = nn.Identity()
            flat = f.shape[1]
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 5 + num_classes),
        )
        self.register_load_state_dict_pre_hook(self._drop_old_classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.head(self.pool(self.backbone.forward_features(x)))  # (B, 5 + K)
        return torch.cat([raw[:, :5].sigmoid(), raw[:, 5:].softmax(dim=1)], dim=1)

    def head_names(self) -> list[str]:
        """Everything after the backbone's features is the head."""
        return ["head"]

    def _drop_old_classifier(self, module, state_dict, prefix, *args) -> None:
        """Checkpoints written before heads moved here hold the backbone's unused 1-way
        classifier; it was never used, so its weights are skipped rather than refused."""
        for name in _CLASSIFIER_NAMES:
            if getattr(self.backbone, name, None) is not None:
                continue  # the backbone has a live module by that name: load it as usual
            stale = f"{prefix}backbone.{name}."
            for key in [k for k in state_dict if k.startswith(stale)]:
                del state_dict[key]


def create_localizer(name: str, *, num_classes: int, in_channels: int, image_size: int,
                     hidden: int = 256, **model_args: Any) -> Localizer:
    """A localizer for `num_classes` object classes on the registered backbone `name`.

    The backbone is built without its classifier; `model_args` go to its builder, except
    GoogLeNet's `aux_logits`: auxiliary classifiers feed class scores into the loss of a
    classifier, and a localizer, which reads only the backbone's features, has no use for them.
    """
    if num_classes < 1:
        raise WaldoError(f"a localizer needs at least one object class (got num_classes={num_classes})")
    model_args.pop("aux_logits", None)
    backbone = create_model(name, num_classes=0, in_channels=in_channels, image_size=image_size,
                            **model_args)
    return Localizer(backbone, num_classes=num_classes, in_channels=in_channels,
                     image_size=image_size, hidden=hidden)
