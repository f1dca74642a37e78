"""`digits`: scikit-learn's real handwritten digits, brought to MNIST-like 1x28x28 images.

scikit-learn ships 1,797 8x8 digits (UCI, 16 grey levels), so this works offline with no
download. Like MNIST, each digit is scaled to a 20x20 box and placed on a 28x28 canvas so
that its centre of mass sits at the centre (LeCun et al.'s MNIST procedure).
The split is stratified and fixed: 20% test, then `val_fraction` of the rest for validation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from training.data.base import SPLIT_SEED, ImageDataModule, channel_stats


def digits_as_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as uint8 images (N, 1, 28, 28) and int64 labels (N,)."""
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    boxes = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    # Offset of each digit's centre of mass from the box centre, in whole pixels, kept on canvas.
    grid = torch.arange(20, dtype=torch.float32) - 9.5
    mass = boxes.sum(dim=(1, 2, 3)).clamp_min(1e-6)
    dy = ((boxes.sum(dim=3)[:, 0] * grid).sum(1) / mass).round().clamp(-4, 4).long()
    dx = ((boxes.sum(dim=2)[:, 0] * grid).sum(1) / mass).round().clamp(-4, 4).long()
    images = torch.zeros(len(boxes), 1, 28, 28)
    for i, (y, x) in enumerate(zip((4 - dy).tolist(), (4 - dx).tolist())):
        images[i, :, y:y + 20, x:x + 20] = boxes[i]  # (N, 1, 28, 28)
    images = (images * 255).round().to(torch.uint8)
    return images, torch.from_numpy(bunch.target).long()


def split_indices(targets: torch.Tensor, val_fraction: float, test_size: float | int = 0.2):
    """Fixed stratified (train, val, test) index split: `test_size` for test (a share, or a
    count), then `val_fraction` of the rest. The test part does not depend on `val_fraction`."""
    index = torch.arange(len(targets))
    rest, test = train_test_split(index, test_size=test_size, stratify=targets,
                                  random_state=SPLIT_SEED)
    train, val = train_test_split(
        rest, test_size=val_fraction, stratify=targets[rest], random_state=SPLIT_SEED
    )
    return train, val, test


class DigitsDataModule(ImageDataModule):
    name = "digits"
    source = "sklearn.datasets.load_digits"  # where the data came from, for the MLflow run
    native_size = 28
    in_channels = 1

    def load(self):
        images, targets = digits_as_mnist()
        train, val, test = split_indices(targets, self.val_fraction)
        self.labels = [str(d) for d in range(10)]
        self.mean, self.std = channel_stats(images[train])

        def subset(idx):
            return TensorDataset(images[idx], targets[idx])

        return subset(train), subset(val), subset(test)
