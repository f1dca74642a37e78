"""Packed data sets: an image folder as a few Parquet shards and a manifest, in a local folder
or a bucket (`s3://...`; `AWS_ENDPOINT_URL` for MinIO or any S3-compatible store).

Millions of small objects are what makes reading images from object storage slow: every
object is a request. `waldo data pack SRC DEST` reads a `folder` (classification) or
`localization-folder` data set exactly as training reads it (the same unreadable files skipped,
the same labels, the same fixed split) and writes each split as shards (at most 2,048 images or
about 64 MB each, so that Ray Data decodes them in parallel) holding the files' encoded bytes,
unchanged, with their label and box:

    DEST/manifest.json            format, task, labels, per split its shards (rows, sha256),
                                  the skipped files, how many test and val images are also
                                  in an earlier split (by content), a digest over all of it
    DEST/train-00000.parquet      at most 2,048 images or about 64 MB each; columns: image
                                  (binary), label (string), box (x, y, w, h in pixels of the
                                  image, or null), name (the file it came from), index (its
                                  place in the split)

`--data packed` / `--data localization-packed` with `--data-dir DEST` train from it: the same
images, labels, split and normalization statistics as training from the folder (a test proves
it), so a model trained either way gets the same ModelCard. Every shard is checked against the
manifest as it is read; a mismatch stops the run with one line naming the shard.
"""

from __future__ import annotations

import hashlib
import io

import torch
from torch.utils.data import Dataset

from training.data.base import channel_stats
from training.data.folder import FolderDataModule, _sample_images
from training.data.images import load_image
from training.data.leakage import SplitOverlap, split_overlap
from training.data.localization import BoxRecord, LocalizationFolderDataModule
from training.data.packmanifest import (  # noqa: F401  (their names here too, as before)
    FORMAT,
    MANIFEST,
    SHARD_BYTES,
    SHARD_ROWS,
    SPLITS,
    Manifest,
    Shard,
    Split,
    read_manifest,
)
from training.errors import WaldoError, one_line
from training.tracking import storage


# -- writing --------------------------------------------------------------------------------------
def _write_shard(fs, path: str, rows: list[dict]) -> Shard:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("image", pa.binary()), ("label", pa.string()), ("box", pa.list_(pa.float64())),
        ("name", pa.string()), ("index", pa.int64())]))
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="none")  # images are compressed already
    data = buffer.getvalue()
    with fs.open(path, "wb") as f:
        f.write(data)
    return Shard(file=path.rsplit("/", 1)[-1], rows=len(rows), sha256=hashlib.sha256(data).hexdigest())


def _chunks(records: list, labels: list[str], localize: bool, shard_bytes: int):
    """A split's records as shard rows, about `shard_bytes` of encoded images or SHARD_ROWS
    images at a time, whichever comes first (one shard, perhaps empty, at least)."""
    rows, size = [], 0
    for index, record in enumerate(records):
        if localize:
            source, box, label = record
        else:
            (source, target), box = record, None
            label = labels[target]
        with open(source, "rb") as f:
            blob = f.read()
        rows.append({"image": blob, "label": label, "box": box, "name": str(source), "index": index})
        size += len(blob)
        if size >= shard_bytes or len(rows) >= SHARD_ROWS:
            yield rows
            rows, size = [], 0
    if rows or not records:
        yield rows


def pack(module, dest: str, *, shard_bytes: int = SHARD_BYTES) -> Manifest:
    """Pack a `folder` or `localization-folder` data module's records into `dest`. A
    destination that cannot be written (a missing bucket, which is never created, an
    unreachable endpoint, a file) is one line before any image is read."""
    storage.check_writable(dest, what="destination")
    localize = isinstance(module, LocalizationFolderDataModule)
    labels, splits = module.records()
    fs, root = storage.filesystem(dest)
    try:
        if not storage.is_remote(dest):  # s3fs's makedirs would create a missing bucket
            fs.makedirs(root, exist_ok=True)
    except Exception as exc:
        raise WaldoError(f"cannot write to {dest}: {one_line(exc)}") from None
    written: dict[str, Split] = {}
    for split in SPLITS:
        shards: list[Shard] = []
        for rows in _chunks(splits[split], labels, localize, shard_bytes):
            path = storage.join(root, f"{split}-{len(shards):05d}.parquet")
            shards.append(_write_shard(fs, path, rows))
        written[split] = Split(count=len(splits[split]), shards=shards)
    manifest = Manifest(task="localize" if localize else "classify", source=module.name, labels=labels,
                        splits=written, skipped_images=[str(p) for p in module.skipped_images],
                        overlap=module.split_overlap)
    manifest.digest = manifest.compute_digest()
    with fs.open(storage.join(root, MANIFEST), "w") as f:
        f.write(manifest.model_dump_json(indent=1))
    return manifest


# -- reading --------------------------------------------------------------------------------------
def check_shards(location: str, manifest: Manifest) -> None:
    """Every shard the manifest lists exists and holds the rows it says, read from the Parquet
    footers alone: what a distributed run's driver checks first, so that a missing or cut
    shard is named before any Ray Data task starts (`read_pack` hashes whole shards instead,
    as it reads them anyway)."""
    import pyarrow.parquet as pq

    fs, root = storage.filesystem(location)
    where = storage.join(location, MANIFEST)
    for split in SPLITS:
        for shard in manifest.splits[split].shards:
            path = storage.join(location, shard.file)
            try:
                with fs.open(storage.join(root, shard.file), "rb") as f:
                    rows = pq.read_metadata(f).num_rows
            except FileNotFoundError:
                raise WaldoError(f"{path} is listed in {where} but does not exist") from None
            except Exception as exc:
                raise WaldoError(f"{path} does not match {where} (not a readable Parquet shard: "
                                 f"{one_line(exc)}); pack again") from None
            if rows != shard.rows:
                raise WaldoError(f"{path} does not match {where} ({rows} rows, the manifest says "
                                 f"{shard.rows}); pack again")


def changed_shard(path: str, where: str) -> WaldoError:
    return WaldoError(f"{path} does not match {where} (sha256 differs): the shard was changed "
                      "or cut short; pack again")


def hash_shards(location: str, manifest: Manifest, base: str, filesystem) -> None:
    """Every shard's sha256 against the manifest's, each shard read and hashed by a Ray Data
    task on whichever node runs it (the driver reads no image): an image changed inside a
    shard stops the run here, with one line, as it does in-process (`read_pack`)."""
    import ray.data

    from training.data.decode import shard_digest

    shards = {shard.file: shard for split in SPLITS for shard in manifest.splits[split].shards}
    if not shards:
        return
    files = ray.data.read_binary_files([storage.join(base, file) for file in shards],
                                       filesystem=filesystem, include_paths=True)
    where = storage.join(location, MANIFEST)
    for row in files.map(shard_digest).take_all():
        file = row["path"].rsplit("/", 1)[-1]  # shards lie at the pack's root (`_write_shard`)
        if row["sha256"] != shards[file].sha256:
            raise changed_shard(storage.join(location, file), where)


def shard_datasets(location: str, task: str, columns: list[str]) -> tuple[Manifest, dict]:
    """The pack at `location` as a Ray Dataset of `columns` per split, for a distributed run's
    Ray Data ingest: the manifest is read, the shards' footers checked, then their digests
    (`hash_shards`)."""
    import ray.data

    from training.data.objects import s3_filesystem

    manifest = read_manifest(location, task)
    check_shards(location, manifest)
    remote = storage.is_remote(location)
    base = location.split("://", 1)[1] if remote else location
    filesystem = s3_filesystem() if remote else None
    hash_shards(location, manifest, base, filesystem)
    return manifest, {split: ray.data.read_parquet(
        [storage.join(base, shard.file) for shard in manifest.splits[split].shards],
        filesystem=filesystem, columns=columns) for split in SPLITS}


def read_pack(location: str, task: str) -> tuple[Manifest, dict[str, list[BoxRecord]]]:
    """The manifest and each split's (encoded image, box or None, label), every shard checked
    against the manifest; a WaldoError naming the object for anything wrong."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = read_manifest(location, task)
    fs, root = storage.filesystem(location)
    where = storage.join(location, MANIFEST)
    splits: dict[str, list[BoxRecord]] = {}
    for split in SPLITS:
        records: list[BoxRecord] = []
        for shard in manifest.splits[split].shards:
            path = storage.join(location, shard.file)
            try:
                data = fs.cat_file(storage.join(root, shard.file))
            except FileNotFoundError:
                raise WaldoError(f"{path} is listed in {where} but does not exist") from None
            except Exception as exc:
                raise WaldoError(f"cannot read {path}: {one_line(exc)}") from None
            if hashlib.sha256(data).hexdigest() != shard.sha256:
                raise changed_shard(path, where)
            # Arrow's own buffer, not a Python file: a file object's last reference may drop on
            # an Arrow thread after read_table returns, which then needs the GIL, and at
            # interpreter exit that aborts the process (seen when a later shard was missing).
            table = pq.read_table(pa.BufferReader(data)).to_pydict()
            records += [(blob, box, label) for blob, box, label
                        in zip(table["image"], table["box"], table["label"])]
        if len(records) != manifest.splits[split].count:
            raise WaldoError(f"{where}: split {split!r} should hold {manifest.splits[split].count} "
                             f"images, its shards hold {len(records)}")
        splits[split] = records
    return manifest, splits


def overlap_of_pack(splits: dict[str, list[BoxRecord]]) -> SplitOverlap:
    """The overlap of a pack whose manifest does not store it (packed before it did), from the
    encoded images; they are named by split and row."""
    return split_overlap({split: [(f"{split} row {i}", blob) for i, (blob, _, _) in enumerate(rows)]
                          for split, rows in splits.items()})


class EncodedImages(Dataset):
    """(encoded image, class index) pairs decoded as a `folder` data set decodes its files."""

    def __init__(self, items: list[tuple[bytes, int]], transform):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        blob, target = self.items[i]
        return self.transform(load_image(io.BytesIO(blob), "RGB")), target


class PackedDataModule(FolderDataModule):
    """`packed`: a classification data set made by `waldo data pack` (local folder or s3://)."""

    name = "packed"

    def load(self):
        if self.data_location is None:
            raise WaldoError("data set 'packed' needs --data-dir: a folder or s3:// prefix made by "
                             "`waldo data pack`")
        manifest, splits = read_pack(self.data_location, "classify")
        self.labels, self.skipped_images = list(manifest.labels), list(manifest.skipped_images)
        self.split_overlap = manifest.overlap or overlap_of_pack(splits)
        index = {label: i for i, label in enumerate(self.labels)}
        to_uint8 = self.to_uint8()
        train, val, test = (EncodedImages([(blob, index[label]) for blob, _, label in splits[s]], to_uint8)
                            for s in SPLITS)
        self.mean, self.std = channel_stats(_sample_images(train, 512))
        return train, val, test


class LocalizationPackedDataModule(LocalizationFolderDataModule):
    """`localization-packed`: a localization data set made by `waldo data pack`."""

    name = "localization-packed"

    def records(self) -> tuple[list[str], dict[str, list[BoxRecord]]]:
        if self.data_location is None:
            raise WaldoError("data set 'localization-packed' needs --data-dir: a folder or s3:// "
                             "prefix made by `waldo data pack`")
        manifest, splits = read_pack(self.data_location, "localize")
        self.skipped_images = list(manifest.skipped_images)
        self.split_overlap = manifest.overlap or overlap_of_pack(splits)
        return list(manifest.labels), splits
