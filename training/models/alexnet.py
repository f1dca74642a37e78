"""AlexNet (Krizhevsky et al., 2012), on torchvision's implementation.

Needs inputs of at least 63x63: the 11x11 stride-4 stem and three 3x3 stride-2 poolings. The
classifier (6x6 pooling, then 9216-4096-4096-classes) holds 58.6M of the 61.1M weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.alexnet import AlexNet as _TVAlexNet

from training.models._api import register_model
from training.models._layers import (
    check_num_classes,
    global_pool,
    materialize,
    placed_like,
    replace_first_conv,
)


def _classifier(num_classes: int, dropout: float) -> nn.Sequential:
    """torchvision's AlexNet classifier, default-initialized as torchvision leaves it."""
    with torch.device("meta"):  # torchvision builds the features too; on meta they cost nothing
        classifier = _TVAlexNet(num_classes=num_classes, dropout=dropout).classifier
    return materialize(classifier)


class AlexNet(_TVAlexNet):
    """torchvision's AlexNet with a swappable classifier; `num_classes=0` builds none."""

    def __init__(self, *, num_classes: int, in_channels: int, dropout: float = 0.5):
        check_num_classes(num_classes)
        # torchvision's constructor always builds the 4096-wide classifier: build everything
        # on the meta device (no memory, no init), then materialize only what is kept.
        # AlexNet uses PyTorch's default init, which `materialize` reproduces.
        with torch.device("meta"):
            super().__init__(num_classes=1, dropout=dropout)
        self.features = materialize(self.features)
        self.features[0] = replace_first_conv(self.features[0], in_channels)
        self.classifier = _classifier(num_classes, dropout) if num_classes else None
        self.drop_rate = dropout  # for a classifier built later
        self.num_features = 256
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 256, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.classifier is None:
            return global_pool(x)  # (B, 256)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 256 * 6 * 6)
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Retarget to `num_classes`: a new last layer (the 4096-wide ones are kept), a fresh
        classifier if there was none, or none at all for 0."""
        check_num_classes(num_classes)
        if not num_classes:
            self.classifier = None
        elif self.classifier is None:
            self.classifier = placed_like(_classifier(num_classes, self.drop_rate), self)
        else:
            last = nn.Linear(self.classifier[-1].in_features, num_classes)
            self.classifier[-1] = placed_like(last, self)
        self.num_classes = num_classes


@register_model("alexnet", min_size=63)
def alexnet(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> AlexNet:
    """AlexNet: 5 conv layers and 3 dense ones (Krizhevsky, Sutskever & Hinton, 2012,
    "ImageNet Classification with Deep Convolutional Neural Networks")."""
    return AlexNet(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
