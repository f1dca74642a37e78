"""ResNet (He et al., 2015, "Deep residual learning"), on torchvision's implementation.

The variants are data: a block type and the number of blocks per stage.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.resnet import ResNet as _TVResNet

from training.models._api import register_model
from training.models._layers import check_num_classes, placed_like, replace_first_conv


class ResNet(_TVResNet):
    """torchvision's ResNet with a swappable classifier; `num_classes=0` builds none."""

    def __init__(self, block, layers: list[int], *, num_classes: int, in_channels: int):
        check_num_classes(num_classes)
        # torchvision always builds `fc`; a 1-way one costs num_features + 1 weights, dropped below.
        super().__init__(block, layers, num_classes=max(num_classes, 1))
        self.conv1 = replace_first_conv(self.conv1, in_channels)
        self.num_features = self.fc.in_features
        self.num_classes = num_classes
        if not num_classes:
            self.fc = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x  # (B, 512 or 2048, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (B, num_features)
        return x if pre_logits or self.fc is None else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh `num_classes`-way `fc` (torchvision's default init), or none for 0."""
        check_num_classes(num_classes)
        self.fc = placed_like(nn.Linear(self.num_features, num_classes), self) if num_classes else None
        self.num_classes = num_classes

    def head_names(self) -> list[str]:
        return [] if self.fc is None else ["fc"]


@register_model("resnet18")
def resnet18(*, num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18: basic blocks, [2, 2, 2, 2] per stage
    (He, Zhang, Ren & Sun, 2015, "Deep Residual Learning for Image Recognition")."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels)


@register_model("resnet34")
def resnet34(*, num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-34: basic blocks, [3, 4, 6, 3] per stage
    (He, Zhang, Ren & Sun, 2015, "Deep Residual Learning for Image Recognition")."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels)


@register_model("resnet50")
def resnet50(*, num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50: bottleneck blocks, [3, 4, 6, 3] per stage
    (He, Zhang, Ren & Sun, 2015, "Deep Residual Learning for Image Recognition")."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels)
