"""What a run trained on, for its MLflow dataset input: source, digest and split sizes.

The digest is a hash of the data itself (the tensors of an in-memory data set, the file list
of a folder, sampled raw items otherwise), so two runs on the same data show the same digest
in MLflow and a changed file, split or rendering shows a different one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from training.data.base import ImageDataModule
from training.data.objects import is_object_store

_SAMPLED_ITEMS = 64  # raw items hashed per split when the data set is neither tensors nor files


@dataclass(frozen=True)
class DataFacts:
    name: str
    source: str
    digest: str
    sizes: dict[str, int]


def describe(dm: ImageDataModule) -> DataFacts:
    """The facts of a set-up data module: its name, where it came from (a package function for
    the embedded sets, the resolved `--data-dir` otherwise), a digest and the split sizes.
    A data module that was handed its facts (a Ray worker fed by Ray Data) gives those."""
    if getattr(dm, "facts", None) is not None:
        return dm.facts
    splits = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}
    sizes = {k: len(ds) if ds is not None else 0 for k, ds in splits.items()}
    source = getattr(dm, "source", None) or (
        dm.data_location if is_object_store(dm.data_location)  # a bucket's folder, as given
        else str((dm.data_dir or dm.resolve_dir()).resolve()))
    h = hashlib.sha256(f"{dm.name}|{dm.labels}|{dm.image_size}".encode())
    for split, ds in splits.items():
        h.update(split.encode())
        if ds is not None:
            _hash_dataset(h, ds)
    return DataFacts(dm.name, source, h.hexdigest()[:16], sizes)


def _hash_dataset(h, ds: Dataset) -> None:
    if isinstance(ds, Subset):
        h.update(torch.as_tensor(ds.indices, dtype=torch.int64).numpy().tobytes())
        _hash_dataset(h, ds.dataset)
    elif isinstance(ds, TensorDataset):
        for t in ds.tensors:
            h.update(t.contiguous().numpy().tobytes())
    elif hasattr(ds, "samples"):  # torchvision's ImageFolder: (path, class index) pairs
        h.update(repr(list(ds.samples)).encode())
    else:  # e.g. rendered canvases: the raw items, before any random augmentation
        get = getattr(ds, "get", ds.__getitem__)
        n = len(ds)
        for i in range(0, n, max(1, n // _SAMPLED_ITEMS)):
            for part in get(i):
                if isinstance(part, torch.Tensor):
                    h.update(part.contiguous().numpy().tobytes())
                else:
                    h.update(repr(part).encode())
