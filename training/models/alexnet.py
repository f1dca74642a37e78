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
    DenseClassifierHead,
    check_num_classes,
    materialize,
    replace_first_conv,
)


def _classifier(num_classes: int, dropout: float) -> nn.Sequential:
    """torchvision's AlexNet classifier, default-initialized as torchvision leaves it."""
    with torch.device("meta"):  # torchvision builds the features too; on meta they cost nothing
        classifier = _TVAlexNet(num_classes=num_classes, dropout=dropout).classifier
    return materialize(classifier)


class AlexNet(DenseClassifierHead, _TVAlexNet):
    """torchvision's AlexNet with a swappable classifier; `num_classes=0` builds none."""

    build_classifier = staticmethod(_classifier)

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


@register_model("alexnet", min_size=63)
def alexnet(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> AlexNet:
    """AlexNet: 5 conv layers and 3 dense ones (Krizhevsky, Sutskever & Hinton, 2012,
    "ImageNet Classification with Deep Convolutional Neural Networks")."""
    return AlexNet(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
