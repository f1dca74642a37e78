"""What Ray Data tasks run on the data of a distributed classification run: read a bucket's
objects, check that they decode and hash them, decode and resize them, hash a pack's shards
(`training.data.raydata` and `training.data.packed` plan the datasets on the driver).

These functions are pickled by reference, so every Ray Data worker process imports this module.
It imports neither Lightning nor torch unless an image is resized or augmented: a fresh worker is ready
in well under a second instead of the 6-7 s that importing Lightning costs, and keeps that
memory. (`tests/integration/test_fresh_imports.py` holds it to that.)
"""

from __future__ import annotations

import hashlib

import numpy as np

from training.data.images import check_image, load_image, open_source
from training.data.objects import read_objects

DECODE_BATCH = 256  # images a Ray Data task decodes at a time


class DecodeBatch:
    """A Ray Data batch of encoded images (`image`: bytes, or `path`) and labels -> `x` uint8
    (N, C, S, S) and `y` int64, decoded and resized as the folder data module decodes its files.
    A resize happens only when the size differs (torchvision's resize returns an image of the
    asked size unchanged, so the pixels are the same either way); skipping the tensor round trip
    keeps a task's cost near the JPEG decoder's own."""

    def __init__(self, labels: list[str], size: int, keep_index: bool = False):
        self.index = {label: i for i, label in enumerate(labels)}
        self.keep_index = keep_index  # pass a pack's `index` column on (the statistics sample)
        self.size = size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sources = batch["image"] if "image" in batch else batch["path"]
        images = [self.decode(source) for source in sources]  # (H, W, C) each, as PIL gives them
        out = {"x": np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)),
               "y": np.asarray([self.index[str(label)] for label in batch["label"]], dtype=np.int64)}
        if self.keep_index:
            out["index"] = np.asarray(batch["index"])
        return out

    def decode(self, source) -> np.ndarray:
        image = load_image(open_source(source), "RGB")
        if image.size == (self.size, self.size):
            return np.asarray(image)
        from torchvision.transforms.v2 import functional as F

        resized = F.resize(F.pil_to_tensor(image), [self.size, self.size], antialias=True)
        return resized.permute(1, 2, 0).numpy()


class AugmentBatch:
    """The recipe's per-image augmentation of decoded training images (`x` uint8 (N, C, S, S)),
    a new draw every epoch; a separate stage so that it runs after a cache of the decoded
    images (`training.data.raydata.plan`)."""

    def __init__(self, augment: str, kind: str, size: int, random_erasing: float = 0.0):
        from training.data.augment import per_image_transform  # on the driver: torchvision

        self.transform = per_image_transform(augment, kind, size, random_erasing)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        images = torch.from_numpy(np.require(batch["x"], requirements="W"))  # a read-only block: copied
        return {**batch, "x": torch.stack([self.transform(image) for image in images]).numpy()}


def fetch_objects(batch: dict[str, np.ndarray], filesystem) -> dict[str, np.ndarray]:
    """A Ray Data batch of object URLs (`path`) -> their bytes (`image`), labels passed on."""
    data = read_objects(list(batch["path"]), filesystem)
    return {"image": np.array(data, dtype=object), "label": batch["label"]}


def check_objects(batch: dict[str, np.ndarray], filesystem) -> dict[str, np.ndarray]:
    """A Ray Data batch of object URLs -> why each one cannot be decoded ("" when it can) and
    the sha256 of its bytes (the driver compares the splits by content with it)."""
    data = read_objects(list(batch["path"]), filesystem)
    return {"path": batch["path"],
            "problem": np.asarray([check_image(blob).problem or "" for blob in data], dtype=object),
            "sha256": np.asarray([hashlib.sha256(blob).hexdigest() for blob in data], dtype=object)}


def shard_digest(row: dict) -> dict:
    """A `read_binary_files` row (a whole shard) -> its path and sha256."""
    return {"path": row["path"], "sha256": hashlib.sha256(row["bytes"]).hexdigest()}


__all__ = ["DECODE_BATCH", "AugmentBatch", "DecodeBatch", "check_objects", "fetch_objects",
           "shard_digest"]
