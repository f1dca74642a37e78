"""ResNet (He et al., 2015, "Deep residual learning"), on torchvision's implementation.

The variants are data: a block type and the number of blocks per stage.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.resnet import ResNet as _TVResNet

from training.models._api import register_model, replace_first_conv


class ResNet(_TVResNet):
    def __init__(self, block, layers: list[int], *, num_classes: int, in_channels: int):
        super().__init__(block, layers, num_classes=num_classes)
        self.conv1 = replace_first_conv(self.conv1, in_channels)
        self.num_features = self.fc.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x  # (B, 512 or 2048, H/32, W/32)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _resnet(block, layers: list[int]):
    def build(*, num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
        return ResNet(block, layers, num_classes=num_classes, in_channels=in_channels)

    return build


resnet18 = register_model("resnet18")(_resnet(BasicBlock, [2, 2, 2, 2]))
resnet34 = register_model("resnet34")(_resnet(BasicBlock, [3, 4, 6, 3]))
resnet50 = register_model("resnet50")(_resnet(Bottleneck, [3, 4, 6, 3]))
