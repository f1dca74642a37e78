"""The base data module: uint8 images in, normalized float batches out.

Datasets yield uint8 tensors (C, H, W) of one size, so collation is cheap. Converting to float,
resizing to `image_size` and normalizing happen once per batch in `on_after_batch_transfer`
(`BatchTransform`), on the device the batch lives on (the GPU when there is one). Serving
repeats exactly these steps from the ModelCard: scale to [0, 1], bilinear resize, subtract
mean, divide by std. Training batches may be augmented on the way (`training.data.augment`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from training.data.augment import Augmented, batched_affine, per_image_transform, random_affine
from training.data.leakage import SplitOverlap
from training.errors import WaldoError

# The train/val/test split does not follow --seed: runs with different seeds see the same data.
SPLIT_SEED = 0


class ImageDataModule(pl.LightningDataModule):
    """Common loaders, batch transform and metadata; subclasses implement `load()`."""

    name: str = ""
    task: str = "classify"  # the task whose targets this data module yields
    native_size: int = 28  # side of the images as the data set stores them
    in_channels: int = 1
    kind: str = "digits"  # what the pictures are: digits or photos (`training.spec.catalog.DATA_KINDS`)
    expects: str = "the folder the data set is kept in"  # what --data-dir names, for messages

    def __init__(
        self,
        *,
        batch_size: int = 64,
        image_size: int | None = None,
        data_dir: str | Path | None = None,
        download: bool = True,
        val_fraction: float = 0.15,
        num_workers: int = 0,
        augment: str = "none",
        random_erasing: float = 0.0,
    ):
        super().__init__()
        self.augment, self.random_erasing = augment, random_erasing
        self.batch_size = batch_size
        self.data_dir = Path(data_dir) if data_dir else None
        # As given: packed data sets also read s3://... (which a Path would mangle).
        self.data_location = str(data_dir) if data_dir else None
        self.download = download
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self._image_size = image_size
        self.labels: list[str] = []
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()
        # Files of the user's data set that `load()` found unreadable and left out (paths);
        # their count is logged on the run (`training.running.steps`).
        self.skipped_images: list[str] = []
        # The user's data: how many test (and val) images are also in an earlier split, by
        # content (`training.data.leakage`); None for the built-in data sets.
        self.split_overlap: SplitOverlap | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._batch_transforms: dict[bool, BatchTransform] = {}

    # --- what subclasses provide ---------------------------------------------------------
    def load(self) -> tuple[Dataset, Dataset, Dataset]:
        """Return (train, val, test) datasets of (uint8 image (C, H, W), int label) and set
        `labels`, `mean` and `std` (per channel, on the [0, 1] scale), and `skipped_images`
        when it leaves unreadable files out."""
        raise NotImplementedError

    # --- metadata ------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self._image_size or self.native_size

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def resolve_dir(self, default: str = "data") -> Path:
        """The data folder: an explicit one must exist; the default is created on demand."""
        if self.data_dir is not None:
            if self.data_dir.exists() and not self.data_dir.is_dir():
                raise WaldoError(f"data directory {str(self.data_dir)!r} is a file; --data-dir "
                                 f"needs a folder ({self.expects})")
            if not self.data_dir.is_dir():
                raise WaldoError(f"data directory {str(self.data_dir)!r} does not exist")
            return self.data_dir
        path = Path(default)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def state_dict(self) -> dict[str, Any]:
        """Labels and normalization travel with the data module into checkpoints."""
        return {
            "name": self.name,
            "labels": list(self.labels),
            "mean": list(self.mean),
            "std": list(self.std),
            "in_channels": self.in_channels,
            "image_size": self.image_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])
        self.mean, self.std = tuple(state["mean"]), tuple(state["std"])
        self._image_size = state["image_size"]

    # --- Lightning hooks -----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.load()
            if self.task == "classify":
                self.train_set = self.augmented(self.train_set)

    def augmented(self, train: Dataset) -> Dataset:
        """The training set with the recipe's per-image augmentation (classification)."""
        if len(train) == 0:  # type: ignore[arg-type]
            return train
        side = int(train[0][0].shape[-1])  # as stored: folders resize while they load
        transform = per_image_transform(self.augment, self.kind, side, self.random_erasing)
        return train if transform is None else Augmented(train, transform)

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a data loader")
        # Pinned host memory lets the copy to a GPU run asynchronously with the step.
        on_gpu = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=on_gpu,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def normalize_with(self, mean, std) -> None:
        """Normalize with these statistics instead of the data's own (pretrained weights, or
        the run a network starts from, expect theirs)."""
        self.mean, self.std = tuple(mean), tuple(std)
        self._batch_transforms.clear()  # rebuilt from the new statistics on the next batch

    def batch_transform(self, training: bool = False) -> BatchTransform:
        """uint8 (B, C, H, W) -> normalized float32 (B, C, S, S) with S = image_size; for a
        training batch, with the batched part of the augmentation (`random_affine`)."""
        augment = training and self.task == "classify" and batched_affine(self.augment, self.kind)
        if augment not in self._batch_transforms:
            self._batch_transforms[augment] = BatchTransform(
                self.image_size, self.mean, self.std, random_affine if augment else None)
        return self._batch_transforms[augment]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, *rest = batch
        training = self.trainer is not None and self.trainer.training
        return (self.batch_transform(training)(images), *rest)


class BatchTransform:
    """uint8 (B, C, H, W) -> float32 (B, C, S, S): scale to [0, 1], optionally augment, resize
    bilinearly (antialiased) when the side is not S, normalize with `mean` and `std`. The same
    arithmetic as torchvision's ToDtype, Resize and Normalize, fused into one multiply-add per
    element: this runs on every batch, where v2's per-call dispatch costs more than the maths
    for small images on the CPU."""

    def __init__(self, size: int, mean, std, augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.size, self.mean, self.std, self.augment = size, tuple(mean), tuple(std), augment
        std_t = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        self._scale = 1 / (255 * std_t)  # x / 255 / std
        self._shift = -torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()  # 0..255; black stays 0 through the augmentation's padding
        if self.augment is not None:
            x = self.augment(x)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True)
        if x.device not in self._on:
            self._on[x.device] = (self._scale.to(x.device), self._shift.to(x.device))
        scale, shift = self._on[x.device]
        return torch.addcmul(shift, x, scale)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) on the [0, 1] scale."""
    x = images.float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())
