"""Small pieces the model families share: adapting the stem, and building or dropping a head."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from training.errors import WaldoError


def check_num_classes(num_classes: int) -> None:
    """0 means no classifier (the network returns pooled features); negatives are an error."""
    if num_classes < 0:
        raise WaldoError(
            f"num_classes must be a positive count, or 0 for no classifier (got {num_classes})"
        )


def replace_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Return `conv` rebuilt for `in_channels` inputs (same geometry), or `conv` itself if it fits.

    The torchvision classics hard-code RGB input; this is the one place they are adapted.
    """
    if conv.in_channels == in_channels:
        return conv
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C) by average; already-flat (B, F) features pass through."""
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1) if x.ndim == 4 else x


def head_modules(net: nn.Module) -> list[nn.Module]:
    """The network's head: the modules its `head_names()` names (the class-mapping layers of
    a classifier, the localization head of a Localizer); everything else is the backbone."""
    return [net.get_submodule(name) for name in net.head_names()]


def backbone_modules(net: nn.Module) -> list[nn.Module]:
    """The backbone's layers that hold weights or statistics (convs, BatchNorms, dense
    layers): every such module outside the head, for freezing and for loading weights."""
    in_head = {id(m) for head in head_modules(net) for m in head.modules()}
    return [m for m in net.modules()
            if id(m) not in in_head
            and (next(m.parameters(recurse=False), None) is not None
                 or isinstance(m, nn.modules.batchnorm._BatchNorm))]


def materialize(module: nn.Module) -> nn.Module:
    """Allocate a meta-device module on the current default device with PyTorch's default init.

    torchvision's constructors always build their classifier. Building them on the meta device
    costs neither memory nor initialization time, so a network built without its classifier
    materializes only the parts it keeps.
    """
    module = module.to_empty(device=torch.get_default_device())
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


def placed_like(new: nn.Module, net: nn.Module) -> nn.Module:
    """Move a freshly built layer to `net`'s device and dtype (a reset on a GPU stays there)."""
    ref = next(net.parameters(), None)
    return new if ref is None else new.to(device=ref.device, dtype=ref.dtype)


class DenseClassifierHead:
    """The head of torchvision's AlexNet and VGG, shared: average pooling to a fixed grid, then
    a dense classifier (in -> 4096 -> 4096 -> classes) that may be absent (`num_classes=0`).

    A family sets `build_classifier(num_classes, dropout)` (torchvision's classifier, as
    torchvision initializes it) and `init_last(layer)` (how a new last layer is initialized),
    and keeps `self.classifier`, `self.avgpool`, `self.features` and `self.drop_rate`.
    """

    build_classifier: Callable[[int, float], nn.Sequential]
    init_last: Callable[[nn.Linear], None] = staticmethod(lambda layer: None)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.classifier is None:
            return global_pool(x)  # (B, C)
        x = torch.flatten(self.avgpool(x), 1)  # (B, C * grid * grid)
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
            self.classifier = placed_like(self.build_classifier(num_classes, self.drop_rate), self)
        else:
            last = nn.Linear(self.classifier[-1].in_features, num_classes)
            self.init_last(last)
            self.classifier[-1] = placed_like(last, self)
        self.num_classes = num_classes

    def head_names(self) -> list[str]:
        """The layer that maps features to classes (re-created by `reset_classifier`)."""
        return [] if self.classifier is None else [f"classifier.{len(self.classifier) - 1}"]
