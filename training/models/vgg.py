"""VGG (Simonyan & Zisserman, 2014), on torchvision's implementation and layer tables.

The variants are torchvision's configuration tables: "A" is VGG-11, "D" VGG-16, "E" VGG-19.
Five 2x2 poolings need inputs of at least 32x32. The classifier (7x7 pooling, then
25088-4096-4096-classes) holds most of the weights: 119.6M of VGG-16's 138.4M.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vgg import VGG as _TVVGG
from torchvision.models.vgg import cfgs, make_layers

from training.models._api import register_model
from training.models._layers import DenseClassifierHead, check_num_classes, replace_first_conv


def _classifier(num_classes: int, dropout: float) -> nn.Sequential:
    """torchvision's VGG classifier with torchvision's initialization (no features built)."""
    return _TVVGG(nn.Sequential(), num_classes=num_classes, dropout=dropout).classifier


def _init_last(layer: nn.Linear) -> None:
    nn.init.normal_(layer.weight, 0, 0.01)  # torchvision's VGG init
    nn.init.zeros_(layer.bias)


class VGG(DenseClassifierHead, _TVVGG):
    """torchvision's VGG with a swappable classifier; `num_classes=0` builds none."""

    build_classifier = staticmethod(_classifier)
    init_last = staticmethod(_init_last)

    def __init__(
        self, cfg: str, *, num_classes: int, in_channels: int, batch_norm: bool, dropout: float
    ):
        check_num_classes(num_classes)
        features = make_layers(cfgs[cfg], batch_norm=batch_norm)
        # Adapted before torchvision's init loop runs, so the stem gets VGG's init too.
        features[0] = replace_first_conv(features[0], in_channels)
        # torchvision's constructor always builds the 4096-wide classifier. On the meta device
        # it costs nothing; its init loop still initializes `features` in place, where they are.
        with torch.device("meta"):
            super().__init__(features, num_classes=1, dropout=dropout)
        self.classifier = _classifier(num_classes, dropout) if num_classes else None
        self.drop_rate = dropout  # for a classifier built later
        self.num_features = 512
        self.num_classes = num_classes


@register_model("vgg11")
def vgg11(
    *, num_classes: int = 1000, in_channels: int = 3, batch_norm: bool = False,
    dropout: float = 0.5,
) -> VGG:
    """VGG-11, configuration "A": 8 conv layers and 3 dense ones (Simonyan & Zisserman, 2014,
    "Very Deep Convolutional Networks for Large-Scale Image Recognition")."""
    return VGG("A", num_classes=num_classes, in_channels=in_channels, batch_norm=batch_norm,
               dropout=dropout)


@register_model("vgg16")
def vgg16(
    *, num_classes: int = 1000, in_channels: int = 3, batch_norm: bool = False,
    dropout: float = 0.5,
) -> VGG:
    """VGG-16, configuration "D": 13 conv layers and 3 dense ones (Simonyan & Zisserman, 2014,
    "Very Deep Convolutional Networks for Large-Scale Image Recognition")."""
    return VGG("D", num_classes=num_classes, in_channels=in_channels, batch_norm=batch_norm,
               dropout=dropout)


@register_model("vgg19")
def vgg19(
    *, num_classes: int = 1000, in_channels: int = 3, batch_norm: bool = False,
    dropout: float = 0.5,
) -> VGG:
    """VGG-19, configuration "E": 16 conv layers and 3 dense ones (Simonyan & Zisserman, 2014,
    "Very Deep Convolutional Networks for Large-Scale Image Recognition")."""
    return VGG("E", num_classes=num_classes, in_channels=in_channels, batch_norm=batch_norm,
               dropout=dropout)
