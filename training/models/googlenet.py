"""GoogLeNet / Inception v1 (Szegedy et al., 2014), on torchvision's implementation.

With `transform_input=True` (what torchvision sets for its pretrained weights) the network
takes ImageNet-normalized input and rescales it to the (x - 0.5) / 0.5 input that Google's
weights were trained on; on 1 channel with the mean of ImageNet's three means and stds.

The two auxiliary classifiers are off by default (6,624,904 parameters at 3 channels and
1,000 classes). With `aux_logits=True`, training-mode `forward` returns torchvision's
`GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`, and the task adds their losses.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.googlenet import GoogLeNet as _TVGoogLeNet
from torchvision.models.googlenet import GoogLeNetOutputs

from training.errors import WaldoError
from training.models._api import register_model
from training.models._layers import check_num_classes, placed_like, replace_first_conv

# torchvision's `GoogLeNet._transform_input` constants: ImageNet's per-channel mean and std.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_aux(aux_logits: bool, num_classes: int) -> None:
    if aux_logits and not num_classes:
        raise WaldoError(
            f"googlenet's auxiliary classifiers (aux_logits=True) need num_classes > 0 "
            f"(got num_classes={num_classes}); use aux_logits=False for a network without one"
        )


def _linear(in_features: int, num_classes: int) -> nn.Linear:
    layer = nn.Linear(in_features, num_classes)
    nn.init.trunc_normal_(layer.weight, mean=0.0, std=0.01, a=-2, b=2)  # torchvision's init
    return layer


class GoogLeNet(_TVGoogLeNet):
    """torchvision's GoogLeNet with a swappable classifier; `num_classes=0` builds none."""

    def __init__(
        self, *, num_classes: int, in_channels: int, aux_logits: bool, dropout: float,
        transform_input: bool = False,
    ):
        check_num_classes(num_classes)
        _check_aux(aux_logits, num_classes)
        # torchvision always builds `fc`; a 1-way one costs 1,025 weights, dropped below.
        super().__init__(num_classes=max(num_classes, 1), aux_logits=aux_logits,
                         transform_input=transform_input, init_weights=True, dropout=dropout)
        self.conv1.conv = replace_first_conv(self.conv1.conv, in_channels)
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
        if in_channels != 3:
            mean, std = (sum(mean) / 3,) * in_channels, (sum(std) / 3,) * in_channels
        # x_c * (std_c / 0.5) + (mean_c - 0.5) / 0.5, per channel, as plain numbers for export
        self._input_scale = [s / 0.5 for s in std]
        self._input_shift = [(m - 0.5) / 0.5 for m in mean]
        self.num_features = self.fc.in_features
        self.num_classes = num_classes
        if not num_classes:
            self.fc = None

    def _features(self, x: torch.Tensor):
        """Run the stem and the inception stages; return features and the aux logits."""
        aux1 = aux2 = None
        if self.transform_input:
            x = self._transform_input(x)
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

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalized (B, C, H, W) -> the [-1, 1] scaling of Google's weights; any C."""
        scale = x.new_tensor(self._input_scale).view(1, -1, 1, 1)
        shift = x.new_tensor(self._input_shift).view(1, -1, 1, 1)
        return x * scale + shift

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x)[0]

    def head_names(self) -> list[str]:
        """`fc` and the auxiliary classifiers' last layers: what `reset_classifier` re-creates."""
        names = [] if self.fc is None else ["fc"]
        return names + [f"{n}.fc2" for n in ("aux1", "aux2") if getattr(self, n) is not None]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool(x), 1))  # (B, 1024), what `fc` takes
        return x if pre_logits or self.fc is None else self.fc(x)

    def forward(self, x: torch.Tensor):
        x, aux1, aux2 = self._features(x)
        logits = self.forward_head(x)
        if aux1 is not None:
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh `num_classes`-way `fc` (and auxiliary outputs, if any), or none for 0."""
        check_num_classes(num_classes)
        _check_aux(self.aux1 is not None, num_classes)
        self.fc = placed_like(_linear(self.num_features, num_classes), self) if num_classes else None
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = placed_like(_linear(aux.fc2.in_features, num_classes), self)
        self.num_classes = num_classes


@register_model("googlenet")
def googlenet(
    *, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = False,
    dropout: float = 0.2, transform_input: bool = False,
) -> GoogLeNet:
    """GoogLeNet (Inception v1): 9 inception modules, optional auxiliary classifiers
    (Szegedy et al., 2014, "Going Deeper with Convolutions")."""
    return GoogLeNet(num_classes=num_classes, in_channels=in_channels,
                     aux_logits=aux_logits, dropout=dropout, transform_input=transform_input)
