"""VGG (Simonyan & Zisserman, 2014), on torchvision's implementation and layer tables.

The variants are torchvision's configuration tables: "A" is VGG-11, "D" VGG-16, "E" VGG-19.
Five 2x2 poolings need inputs of at least 32x32.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vgg import VGG as _TVVGG
from torchvision.models.vgg import cfgs, make_layers

from training.models._api import register_model, replace_first_conv


class VGG(_TVVGG):
    def __init__(
        self, cfg: str, *, num_classes: int, in_channels: int, batch_norm: bool, dropout: float
    ):
        super().__init__(make_layers(cfgs[cfg], batch_norm=batch_norm),
                         num_classes=num_classes, dropout=dropout)
        self.features[0] = replace_first_conv(self.features[0], in_channels)
        self.num_features = 512

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 512, H/32, W/32)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _vgg(cfg: str):
    def build(
        *, num_classes: int = 1000, in_channels: int = 3, batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> nn.Module:
        return VGG(cfg, num_classes=num_classes, in_channels=in_channels,
                   batch_norm=batch_norm, dropout=dropout)

    return build


vgg11 = register_model("vgg11")(_vgg("A"))
vgg16 = register_model("vgg16")(_vgg("D"))
vgg19 = register_model("vgg19")(_vgg("E"))
