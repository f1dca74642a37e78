"""`folder`: the user's own images, one sub-folder per class (torchvision's ImageFolder).

If `--data-dir` holds `train/` (and optionally `val/`, `test/`) sub-folders they are used as
given; otherwise one folder of classes is split with fixed fractions. Images are read as RGB
(`training.data.images.to_mode`: 16-bit greyscale scaled to 8 bits, alpha dropped) and resized
to `--image-size` (64 by default) as they load, so batches collate. Every image of every split
is decoded once before training; unreadable ones are skipped with a warning each
(`training.data.images.skip_unreadable`) and listed in `skipped_images`.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset, random_split
from torchvision import datasets
from torchvision.transforms import v2

from training.data.augment import Augmented
from training.data.base import SPLIT_SEED, ImageDataModule, channel_stats
from training.data.images import load_image, skip_unreadable
from training.errors import WaldoError

# Normalization statistics come from at most this many training images.
_STATS_SAMPLE = 512


class FolderDataModule(ImageDataModule):
    name = "folder"
    kind = "photos"
    native_size = 64
    in_channels = 3

    def to_uint8(self) -> v2.Transform:
        """A decoded image -> uint8 (C, image_size, image_size), as every split is read."""
        return v2.Compose([v2.PILToTensor(), v2.Resize((self.image_size, self.image_size), antialias=True)])

    def _image_folder(self, root) -> datasets.ImageFolder:
        """The ImageFolder at `root`, with the files that cannot be read taken out."""
        try:
            ds = datasets.ImageFolder(str(root), transform=self.to_uint8(), loader=load_image)
        except (FileNotFoundError, RuntimeError) as exc:
            raise WaldoError(
                f"no images found in {str(root)!r}: expected one sub-folder per class "
                f"holding .jpg/.png files ({exc})"
            ) from None
        paths = [path for path, _ in ds.samples]
        groups = [f"class {ds.classes[target]!r}" for _, target in ds.samples]
        readable, skipped = skip_unreadable(paths, groups, where=root, mode="RGB")
        if skipped:
            ds.samples = [s for s, ok in zip(ds.samples, readable) if ok]
            ds.imgs = ds.samples  # ImageFolder's alias of `samples`
            ds.targets = [target for _, target in ds.samples]
            self.skipped_images.extend(skipped)
        return ds

    def load(self):
        if self.data_dir is None:
            raise WaldoError("data set 'folder' needs --data-dir: a folder with one sub-folder per class")
        root = self.resolve_dir()
        self.skipped_images = []
        if (root / "train").is_dir():
            train = self._image_folder(root / "train")
            val = self._image_folder(root / "val") if (root / "val").is_dir() else None
            test = self._image_folder(root / "test") if (root / "test").is_dir() else None
            classes = train.classes
            if val is None:
                train, val = self._split(train, self.val_fraction)
            test = test if test is not None else val
        else:
            full = self._image_folder(root)
            classes = full.classes
            rest, test = self._split(full, 0.2)
            train, val = self._split(rest, self.val_fraction)
        self.labels = list(classes)
        self.mean, self.std = channel_stats(_sample_images(train, _STATS_SAMPLE))
        return train, val, test

    def records(self) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
        """The classes and each split's (image file, class index), split as training splits
        them (`waldo data pack` writes exactly these)."""
        if self.train_set is None:
            self.setup("fit")
        splits = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
        return self.labels, {name: _samples(ds) for name, ds in splits.items()}

    def _split(self, ds: Dataset, fraction: float) -> tuple[Subset, Subset]:
        n_out = max(1, round(len(ds) * fraction))
        if n_out >= len(ds):
            after = (f" left after skipping {len(self.skipped_images)} unreadable ones"
                     if self.skipped_images else "")
            raise WaldoError(f"too few images ({len(ds)}{after}) to hold out {fraction:.0%} of "
                             f"them; need at least {n_out + 1}")
        kept, held = random_split(
            ds, [len(ds) - n_out, n_out], generator=torch.Generator().manual_seed(SPLIT_SEED)
        )
        return kept, held


def _samples(ds: Dataset) -> list[tuple[str, int]]:
    """(file, class index) of an ImageFolder or of (nested) Subsets of one, in order (through
    the training set's augmentation wrapper)."""
    if isinstance(ds, Subset):
        inner = _samples(ds.dataset)
        return [inner[i] for i in ds.indices]
    if isinstance(ds, Augmented):
        return _samples(ds.dataset)
    return list(ds.samples)


def _sample_images(ds: Dataset, limit: int) -> torch.Tensor:
    step = max(1, len(ds) // limit)
    return torch.stack([ds[i][0] for i in range(0, len(ds), step)][:limit])
