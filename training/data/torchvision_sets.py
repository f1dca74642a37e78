"""`mnist`, `fashion-mnist` and `cifar10`: torchvision's data sets, read from a local folder.

torchvision reads (and, when online, downloads) the files in their usual formats under
`--data-dir`. The images are then held in memory as uint8 tensors. Validation is a fixed
`val_fraction` of the training set; the official test set is the test split.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import TensorDataset, random_split
from torchvision import datasets

from training.data.base import SPLIT_SEED, ImageDataModule
from training.errors import WaldoError

DEFAULT_DIR = "data"  # without --data-dir: ./data, created for the download


@contextmanager
def _undone_on_failure(folder: Path) -> Iterator[None]:
    """When the body fails (files missing, download failed or interrupted), remove what it
    created in `folder`: the folder itself and any missing parents if it did not exist, else
    the entries that were not there before. A folder that existed stays, and so does all that
    was in it: nothing of the user's is removed, and no empty ./data is left behind."""
    folder = folder.absolute()
    existed = folder.is_dir()
    before = set(os.listdir(folder)) if existed else set()
    top = folder
    while not existed and not top.parent.exists() and top.parent != top:
        top = top.parent  # the outermost folder that the body would create
    try:
        yield
    except BaseException:
        if existed:
            now = set(os.listdir(folder)) if folder.is_dir() else before
            created = [folder / name for name in now - before]
        else:
            created = [top] if top.exists() else []
        for path in created:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


class TorchvisionDataModule(ImageDataModule):
    dataset_cls: type = datasets.MNIST
    expected_files: str = ""  # told to the user when the files are missing
    labels_: list[str] = []
    mean_: tuple[float, ...] = ()
    std_: tuple[float, ...] = ()

    def _open(self, root, train: bool):
        try:
            return self.dataset_cls(root, train=train, download=False)
        except RuntimeError:
            pass  # not on disk yet
        where = f"{root}/{self.expected_files}"
        if not self.download:
            raise WaldoError(f"{self.name} files not found: put them in {where} (downloads are off)")
        try:
            return self.dataset_cls(root, train=train, download=True)
        except Exception as exc:  # offline, proxy, mirror down: all end the same way
            raise WaldoError(
                f"{self.name} files not found in {where} and the download failed "
                f"({type(exc).__name__}); copy the files there and run again"
            ) from None

    @staticmethod
    def _as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.as_tensor(ds.data)
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)

    def load(self):
        with _undone_on_failure(self.data_dir or Path(DEFAULT_DIR)):
            root = self.resolve_dir(DEFAULT_DIR)
            train_full = TensorDataset(*self._as_tensors(self._open(root, train=True)))
            test = TensorDataset(*self._as_tensors(self._open(root, train=False)))
        n_val = max(1, int(len(train_full) * self.val_fraction))
        train, val = random_split(
            train_full, [len(train_full) - n_val, n_val],
            generator=torch.Generator().manual_seed(SPLIT_SEED),
        )
        self.labels, self.mean, self.std = list(self.labels_), self.mean_, self.std_
        return train, val, test


class MNISTDataModule(TorchvisionDataModule):
    name = "mnist"
    dataset_cls = datasets.MNIST
    expected_files = "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"
    labels_ = [str(d) for d in range(10)]
    mean_, std_ = (0.1307,), (0.3081,)  # the usual MNIST training-set statistics


class FashionMNISTDataModule(TorchvisionDataModule):
    name = "fashion-mnist"
    dataset_cls = datasets.FashionMNIST
    expected_files = "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"
    labels_ = ["t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
    mean_, std_ = (0.2860,), (0.3530,)


class CIFAR10DataModule(TorchvisionDataModule):
    kind = "photos"
    name = "cifar10"
    native_size = 32
    in_channels = 3
    dataset_cls = datasets.CIFAR10
    expected_files = "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"
    labels_ = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]
    mean_, std_ = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
