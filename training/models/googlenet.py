"""GoogLeNet / Inception v1 (Szegedy et al., 2014), on torchvision's implementation.

The two auxiliary classifiers are off by default (6,624,904 parameters at 3 channels and
1,000 classes). With `aux_logits=True`, training-mode `forward` returns torchvision's
`GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`, and the task adds their losses.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.googlenet import GoogLeNet as _TVGoogLeNet
from torchvision.models.googlenet import GoogLeNetOutputs

from training.models._api import register_model, replace_first_conv


class GoogLeNet(_TVGoogLeNet):
    def __init__(
        self, *, num_classes: int, in_channels: int, aux_logits: bool, dropout: float
    ):
        super().__init__(num_classes=num_classes, aux_logits=aux_logits,
                         transform_input=False, init_weights=True, dropout=dropout)
        self.conv1.conv = replace_first_conv(self.conv1.conv, in_channels)
        self.num_features = self.fc.in_features

    def _features(self, x: torch.Tensor):
        """Run the stem and the inception stages; return features and the aux logits."""
        aux1 = aux2 = None
        x = self.maxpool1(self.conv1(x))  # (B, 64, H/4, W/4)
        x = self.maxpool2(self.conv3(self.conv2(x)))  # (B, 192, H/8, W/8)
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # (B, 480, H/16, W/16)
        x = self.inception4a(x)
        if self.aux1 is not None and self.training:
            aux1 = self.aux1(x)
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        if self.aux2 is not None and self.training:
            aux2 = self.aux2(x)
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))  # (B, 1024, H/32, W/32)
        return x, aux1, aux2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x)[0]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))

    def forward(self, x: torch.Tensor):
        x, aux1, aux2 = self._features(x)
        logits = self.forward_head(x)
        if aux1 is not None:
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits


@register_model("googlenet")
def googlenet(
    *, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = False,
    dropout: float = 0.2,
) -> nn.Module:
    return GoogLeNet(num_classes=num_classes, in_channels=in_channels,
                     aux_logits=aux_logits, dropout=dropout)
