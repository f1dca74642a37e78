"""`folder`: the user's own images, one sub-folder per class (torchvision's ImageFolder).

If `--data-dir` holds `train/` (and optionally `val/`, `test/`) sub-folders they are used as
given; otherwise one folder of classes is split with fixed fractions. Images are read as RGB
(`training.data.images.to_mode`: 16-bit greyscale scaled to 8 bits, alpha dropped) and resized
to `--image-size` (64 by default) as they load, so batches collate. Every image of every split
is decoded once before training; unreadable ones are skipped with a warning each
(`training.data.images.skip_unreadable`) and listed in `skipped_images`. Links are followed
as `training.data.links` decides (never out of `--data-dir`, never twice, each file read once),
and the splits are compared by content (`training.data.leakage`, `split_overlap`).

`--data-dir s3://bucket/prefix` holds the same tree in a bucket: in-process training reads a
local copy of it (`training.data.objects.mirror`), a distributed run streams it through Ray
Data (`training.data.raydata`); both see the same labels and splits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset, random_split
from torchvision import datasets
from torchvision.datasets.folder import has_file_allowed_extension
from torchvision.transforms import v2

from training.data.augment import Augmented
from training.data.base import SPLIT_SEED, ImageDataModule, channel_stats
from training.data.images import check_images, load_image, skip_unreadable
from training.data.leakage import split_overlap
from training.data.links import FolderWalk
from training.data.objects import SPLIT_FOLDERS, is_object_store, mirror
from training.errors import WaldoError

# Normalization statistics come from at most this many training images.
STATS_SAMPLE = 512


class FolderDataModule(ImageDataModule):
    name = "folder"
    kind = "photos"
    native_size = 64
    in_channels = 3
    expects = "one sub-folder per class, or train/, val/ and test/ of such"
    _mirror: Path | None = None  # the local copy of an s3:// --data-dir (in-process)

    def to_uint8(self) -> v2.Transform:
        """A decoded image -> uint8 (C, image_size, image_size), as every split is read."""
        return v2.Compose([v2.PILToTensor(), v2.Resize((self.image_size, self.image_size), antialias=True)])

    def _image_folder(self, root, walk: FolderWalk | None = None) -> datasets.ImageFolder:
        """The ImageFolder at `root`, links and duplicates handled as `walk` decides (by
        default, as for a data root read as one folder of classes), with the files that cannot
        be read taken out."""
        walk = walk or FolderWalk(root, [root])
        try:
            ds = LinkSafeImageFolder(str(root), walk, transform=self.to_uint8(), loader=load_image)
        except (FileNotFoundError, RuntimeError) as exc:
            raise WaldoError(
                f"no images found in {self.display_name(root)!r}: expected one sub-folder per class "
                f"holding .jpg/.png files ({exc})"
            ) from None
        names = [self.display_name(path) for path, _ in ds.samples]
        groups = [f"class {ds.classes[target]!r}" for _, target in ds.samples]
        checks = check_images([path for path, _ in ds.samples], mode="RGB")
        readable, skipped = skip_unreadable(
            names, groups, where=self.display_name(root), mode="RGB",
            checks={name: checks[str(path)] for name, (path, _) in zip(names, ds.samples)})
        if skipped:
            ds.samples = [s for s, ok in zip(ds.samples, readable) if ok]
            ds.imgs = ds.samples  # ImageFolder's alias of `samples`
            ds.targets = [target for _, target in ds.samples]
            self.skipped_images.extend(skipped)
        return ds

    def load(self):
        if self.data_dir is None:
            raise WaldoError("data set 'folder' needs --data-dir: a folder with one sub-folder per class")
        self.skipped_images = []
        if is_object_store(self.data_location):
            # In-process: a local copy of the bucket's folder, refreshed (`objects.mirror`).
            self._mirror = mirror(self.data_location)
            root = self._mirror
        else:
            root = self.resolve_dir()
        splits = ([split for split in SPLIT_FOLDERS if (root / split).is_dir()]
                  if (root / "train").is_dir() else [])
        walk = FolderWalk.of_splits(root, splits)
        parts = ({split: self._image_folder(root / split, walk) for split in splits}
                 if splits else {"all": self._image_folder(root, walk)})
        walk.report(self.display_name(root))
        self.labels = list((parts.get("train") or parts["all"]).classes)
        train, val, test = self.arrange(parts)
        self.split_overlap = split_overlap(
            {split: [(self.display_name(path), path) for path, _ in samples_of(ds)]
             for split, ds in (("train", train), ("val", val), ("test", test))},
            test_is_val=test is val)
        self.mean, self.std = channel_stats(_sample_images(train, STATS_SAMPLE))
        return train, val, test

    def arrange(self, parts: dict[str, Sequence]) -> tuple[Sequence, Sequence, Sequence]:
        """(train, val, test) from the folders found ({"all": ..} or some of "train", "val",
        "test"): what is missing is held out of what is there, with fixed fractions and seed.
        Works on ImageFolders and on plain lists of samples alike (`training.data.raydata`
        splits a bucket's listing with it, so both paths get the same split)."""
        if "all" in parts:
            rest, test = self._split(parts["all"], 0.2)
            train, val = self._split(rest, self.val_fraction)
            return train, val, test
        train, val, test = parts["train"], parts.get("val"), parts.get("test")
        if val is None:
            train, val = self._split(train, self.val_fraction)
        return train, val, test if test is not None else val

    def display_name(self, path: str | Path) -> str:
        """How messages name a file: for a bucket's folder, the object's URL, not its copy."""
        if self._mirror is not None:
            return f"{self.data_location.rstrip('/')}/{Path(path).relative_to(self._mirror).as_posix()}"
        return str(path)

    def records(self) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
        """The classes and each split's (image file, class index), split as training splits
        them (`waldo data pack` writes exactly these)."""
        if self.train_set is None:
            self.setup("fit")
        splits = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
        return self.labels, {name: samples_of(ds) for name, ds in splits.items()}

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


class LinkSafeImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder whose walk follows links as `training.data.links.FolderWalk`
    decides (never out of the data root, never to a folder read anyway) and reads each file
    once; everything else (loading, transforms, `samples`, `classes`) is torchvision's."""

    def __init__(self, root: str, walk: FolderWalk, **kwargs):
        self.walk = walk  # before torchvision's __init__, which calls the two methods below
        super().__init__(root, **kwargs)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = self.walk.subfolders(directory)
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: i for i, name in enumerate(classes)}

    def make_dataset(self, directory: str | Path, class_to_idx: dict[str, int],
                     extensions: tuple[str, ...] | None = None,
                     is_valid_file: Callable[[str], bool] | None = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        def valid(path: str) -> bool:
            return is_valid_file(path) if is_valid_file else has_file_allowed_extension(path, extensions)

        found = [(path, class_to_idx[name], linked) for name in sorted(class_to_idx)
                 for path, linked in self.walk.files(Path(directory, name)) if valid(path)]
        samples = self.walk.read_once(found)
        present = {target for _, target in samples}
        empty = {name for name, i in class_to_idx.items() if i not in present}
        if empty and not allow_empty:  # torchvision's own message
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(sorted(empty))}. "
                                    f"Supported extensions are: {', '.join(extensions or ())}")
        return samples


def samples_of(ds: Dataset | Sequence) -> list[tuple[str, int]]:
    """(file, class index) of an ImageFolder (or a list of samples) or of (nested) Subsets of
    one, in order (through the training set's augmentation wrapper)."""
    if isinstance(ds, list):
        return list(ds)
    if isinstance(ds, Subset):
        inner = samples_of(ds.dataset)
        return [inner[i] for i in ds.indices]
    if isinstance(ds, Augmented):
        return samples_of(ds.dataset)
    return list(ds.samples)


def _sample_images(ds: Dataset, limit: int) -> torch.Tensor:
    step = max(1, len(ds) // limit)
    return torch.stack([ds[i][0] for i in range(0, len(ds), step)][:limit])
