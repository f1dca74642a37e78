"""The two networks of the source material's MNIST experiment: a dense MLP and a two-conv CNN.

Both are sized for 1x28x28 inputs by default: the MLP has 178,110 parameters and the CNN
5,386 (conv 5x5 1->8, pool, conv 3x3 8->16, pool, dense 400->10).
"""

from __future__ import annotations

import torch
from torch import nn

from training.models._api import register_model


class SequentialClassifier(nn.Module):
    """A `features` stage followed by a `head`, with the shared backbone interface."""

    def __init__(self, features: nn.Sequential, head: nn.Module, num_features: int):
        super().__init__()
        self.features = features
        self.head = head
        self.num_features = num_features  # size of dim 1 of forward_features' output

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("mlp", default_input=(1, 28, 28), min_size=1, sized=True)
def mlp(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Dense 784-200 (ReLU)-100 (tanh)-10 network on flattened pixels."""
    features = nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 200),
        nn.ReLU(inplace=True),
        nn.Linear(200, 100),
        nn.Tanh(),
    )
    return SequentialClassifier(features, nn.Linear(100, num_classes), num_features=100)


@register_model("cnn", default_input=(1, 28, 28), min_size=14, sized=True)
def cnn(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Two conv layers with max pooling and one dense layer (the source's "model2")."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 8, kernel_size=5),  # (B, 8, 24, 24) at 28x28
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # (B, 8, 12, 12)
        nn.Conv2d(8, 16, kernel_size=3),  # (B, 16, 10, 10)
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # (B, 16, 5, 5)
    )
    side = ((image_size - 4) // 2 - 2) // 2
    head = nn.Sequential(nn.Flatten(), nn.Linear(16 * side * side, num_classes))
    return SequentialClassifier(features, head, num_features=16)
