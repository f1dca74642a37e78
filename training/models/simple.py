"""The two networks of the source material's MNIST experiment: a dense MLP and a two-conv CNN.

Both are sized for 1x28x28 inputs by default: the MLP has 178,110 parameters and the CNN
5,386 (conv 5x5 1->8, pool, conv 3x3 8->16, pool, dense 400->10).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from training.models._api import register_model
from training.models._layers import check_num_classes, global_pool, placed_like


class SequentialClassifier(nn.Module):
    """A `features` stage followed by a dense `head` whose last layer is the classifier, with
    the shared backbone interface. `num_classes=0` builds no head."""

    def __init__(self, features: nn.Sequential, make_head: Callable[[int], nn.Module], *,
                 num_features: int, num_classes: int):
        super().__init__()
        self.features = features
        # head(num_classes): a Linear, or a Sequential ending in one. A module-level function
        # or a partial of one, so the network still pickles.
        self.make_head = make_head
        self.num_features = num_features  # size of dim 1 of forward_features' output
        self.head: nn.Module | None = None
        self.reset_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.head is None:
            return global_pool(x)  # (B, num_features)
        if not pre_logits:
            return self.head(x)
        return self.head[:-1](x) if isinstance(self.head, nn.Sequential) else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Retarget to `num_classes`: a new last layer (hidden dense layers are kept), a fresh
        head if there was none, or none at all for 0."""
        check_num_classes(num_classes)
        if not num_classes:
            self.head = None
        elif self.head is None:
            self.head = placed_like(self.make_head(num_classes), self)
        elif isinstance(self.head, nn.Sequential):
            self.head[-1] = placed_like(nn.Linear(self.head[-1].in_features, num_classes), self)
        else:
            self.head = placed_like(nn.Linear(self.head.in_features, num_classes), self)
        self.num_classes = num_classes

    def head_names(self) -> list[str]:
        """The last Linear (the hidden dense layers of lenet5 belong to the backbone)."""
        if self.head is None:
            return []
        return [f"head.{len(self.head) - 1}"] if isinstance(self.head, nn.Sequential) else ["head"]


def _dense(in_features: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))


@register_model("mlp", default_input=(1, 28, 28), min_size=1, sized=True)
def mlp(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> SequentialClassifier:
    """Dense 784-200 (ReLU)-100 (tanh)-10 network on flattened pixels (the source material's
    MNIST baseline)."""
    features = nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 200),
        nn.ReLU(inplace=True),
        nn.Linear(200, 100),
        nn.Tanh(),
    )
    return SequentialClassifier(features, partial(nn.Linear, 100), num_features=100,
                                num_classes=num_classes)


@register_model("cnn", default_input=(1, 28, 28), min_size=14, sized=True)
def cnn(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> SequentialClassifier:
    """Two conv layers with max pooling and one dense layer (the source material's "model2")."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 8, kernel_size=5),  # (B, 8, 24, 24) at 28x28
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # (B, 8, 12, 12)
        nn.Conv2d(8, 16, kernel_size=3),  # (B, 16, 10, 10)
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # (B, 16, 5, 5)
    )
    side = ((image_size - 4) // 2 - 2) // 2
    return SequentialClassifier(features, partial(_dense, 16 * side * side), num_features=16,
                                num_classes=num_classes)
