"""A pack's manifest (`waldo data pack`): its model, and reading and checking it.

Apart from `training.data.packed`, which imports torch for the data modules, so that readers of
a pack that train nothing (`waldo predict --model` over a pack) stay light.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from training.data.leakage import SplitOverlap
from training.errors import WaldoError, one_line
from training.spec.catalog import Task
from training.tracking import storage

FORMAT = "waldo-packed/1"
MANIFEST = "manifest.json"
SHARD_BYTES = 64 * 2**20  # encoded image bytes per shard, about
SHARD_ROWS = 2048  # images per shard at most: Ray Data reads (and decodes) a shard per task
SPLITS = ("train", "val", "test")


class Shard(BaseModel):
    file: str
    rows: int
    sha256: str


class Split(BaseModel):
    count: int
    shards: list[Shard]


class Manifest(BaseModel):
    format: Literal["waldo-packed/1"] = FORMAT
    task: Task
    source: str  # the data set it was packed from: folder or localization-folder
    labels: list[str]
    splits: dict[str, Split]
    skipped_images: list[str] = []
    # test (and val) images also in an earlier split, by content, as packed; packs written
    # before it was stored have none (then `read_pack` readers compute it from the images)
    overlap: SplitOverlap | None = None
    digest: str = ""  # sha256 over everything above

    def compute_digest(self) -> str:
        # Without an overlap, the body is what it was before the field existed: old packs
        # still match their digest.
        body = self.model_dump(exclude={"digest"} | ({"overlap"} if self.overlap is None else set()))
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_manifest(location: str, task: str | None) -> Manifest:
    """The pack's manifest, checked (its digest, its task unless `task` is None, its splits); a
    WaldoError naming the object for anything wrong."""
    fs, root = storage.filesystem(location)
    where = storage.join(location, MANIFEST)
    if not storage.is_remote(location) and Path(location).is_file():
        raise WaldoError(f"data directory {location!r} is a file; --data-dir needs the folder "
                         "written by `waldo data pack SRC DEST`")
    try:
        text = fs.cat_file(storage.join(root, MANIFEST))
    except FileNotFoundError:
        raise WaldoError(f"{where} does not exist: --data-dir must be a folder made by "
                         f"`waldo data pack SRC DEST`") from None
    except Exception as exc:  # no bucket, no access, no endpoint: botocore/aiohttp errors
        raise WaldoError(f"cannot read {where}: {one_line(exc)}") from None
    try:
        manifest = Manifest.model_validate_json(text)
    except ValidationError as exc:
        raise WaldoError(f"{where} is not a Waldo pack manifest ({FORMAT}): "
                         f"{one_line(exc).split(' For further')[0]}") from None
    if manifest.digest != manifest.compute_digest():
        raise WaldoError(f"{where}: its digest does not match its contents; it was edited "
                         "after packing (pack again)")
    if task is not None and manifest.task != task:
        name = "packed" if manifest.task == "classify" else "localization-packed"
        raise WaldoError(f"{location} holds {manifest.task} data; train it with --data {name}")
    missing = [s for s in SPLITS if s not in manifest.splits]
    if missing:
        raise WaldoError(f"{where} has no split(s) {', '.join(missing)}")
    return manifest


__all__ = ["FORMAT", "MANIFEST", "SHARD_BYTES", "SHARD_ROWS", "SPLITS", "Manifest", "Shard", "Split",
           "read_manifest"]
