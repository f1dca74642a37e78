"""AlexNet (Krizhevsky et al., 2012), on torchvision's implementation.

Needs inputs of at least 63x63: the 11x11 stride-4 stem and three 3x3 stride-2 poolings.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.alexnet import AlexNet as _TVAlexNet

from training.models._api import register_model, replace_first_conv


class AlexNet(_TVAlexNet):
    def __init__(self, *, num_classes: int, in_channels: int, dropout: float = 0.5):
        super().__init__(num_classes=num_classes, dropout=dropout)
        self.features[0] = replace_first_conv(self.features[0], in_channels)
        self.num_features = 256

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 256, H/32, W/32)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("alexnet", min_size=63)
def alexnet(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    return AlexNet(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
