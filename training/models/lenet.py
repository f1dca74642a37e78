"""LeNet-5 (LeCun et al., 1998, "Gradient-based learning applied to document recognition").

Two 5x5 conv layers (6 and 16 maps) and dense layers 400-120-84-classes: 61,706 parameters
for 10 classes on 1x32x32, or on 28x28 with padding 2 on the first conv (the MNIST setting).
ReLU and max pooling replace the original's scaled tanh and trainable subsampling: same
parameter count, and it trains in a few epochs.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from training.models._api import register_model
from training.models.simple import SequentialClassifier


def _head(in_features: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 120),
        nn.ReLU(inplace=True),
        nn.Linear(120, 84),
        nn.ReLU(inplace=True),
        nn.Linear(84, num_classes),
    )


@register_model("lenet5", default_input=(1, 28, 28), min_size=28, sized=True)
def lenet5(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> SequentialClassifier:
    """LeNet-5: two 5x5 conv layers and dense layers 400-120-84-classes (LeCun, Bottou, Bengio
    & Haffner, 1998, "Gradient-Based Learning Applied to Document Recognition")."""
    padding = 2 if image_size < 32 else 0
    features = nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),  # (B, 6, 28, 28)
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # (B, 6, 14, 14)
        nn.Conv2d(6, 16, kernel_size=5),  # (B, 16, 10, 10)
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # (B, 16, 5, 5)
    )
    side = ((image_size + 2 * padding - 4) // 2 - 4) // 2
    return SequentialClassifier(features, partial(_head, 16 * side * side), num_features=16,
                                num_classes=num_classes)
