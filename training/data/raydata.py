"""Ray Data ingest for distributed runs (`--workers N`) of the user's image classification data:
`folder` and `packed`, each from a local folder or from `s3://`.

Where each stage runs:

    driver          lists the data (the folder's files, a bucket's objects, or the pack's
                    manifest), decides labels, split and normalization statistics exactly as the
                    in-process data module does (for a pack or a bucket, from the same sampled
                    training images, decoded by Ray Data tasks), and hands the worker loop only
                    those facts
    Ray Data tasks  read the files, objects or Parquet shards (pyarrow; S3 through
                    AWS_ENDPOINT_URL), check and hash a bucket's images and hash a pack's shards before
                    training, decode and resize (`training.data.decode`), on any node's CPUs,
                    streaming; then the recipe's per-image augmentation of training images
    object store    the decoded images between epochs, when they fit in CACHE_SHARE of it
                    (`cache_decoded`; the augmentation runs after it, anew every epoch); larger
                    data sets are decoded again every epoch
    each worker     iterates its own shard (`ray.train.get_dataset_shard`, split evenly) as
                    torch batches of uint8 images, which the data module's batch transform
                    normalizes on the worker's device, as in-process

The driver never holds the images. Labels, split, statistics and so the ModelCard are the ones
in-process training gets (tests/integration/test_ray_data.py).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.data.base import ImageDataModule, channel_stats
from training.data.decode import DECODE_BATCH, AugmentBatch, DecodeBatch, check_objects, fetch_objects
from training.data.folder import STATS_SAMPLE, samples_of
from training.data.images import ImageCheck, skip_unreadable
from training.data.leakage import overlap_of_digests
from training.data.objects import is_object_store, list_tree, s3_filesystem
from training.data.provenance import DataFacts, describe
from training.data.raydata_boxes import STREAMED_BOXES, plan_boxes
from training.errors import WaldoError

# Data sets that a distributed run reads through Ray Data.
STREAMED = ("folder", "packed", *STREAMED_BOXES)
DATA_CPUS = 1.0  # CPUs a job keeps free beside its workers for its Ray Data tasks
# The share of the cluster's object store memory that a run's decoded images may take to be
# kept decoded between epochs (the rest stays for the blocks in flight and other jobs).
CACHE_SHARE = 0.25
SPLITS = ("train", "val", "test")


@dataclass
class Ingest:
    """What the driver hands every worker: the data module's state, facts and split sizes."""

    state: dict[str, Any]  # ImageDataModule.state_dict(): labels, mean, std, image size
    facts: DataFacts
    counts: dict[str, int]


def _packed(dm: ImageDataModule) -> tuple[dict, DataFacts, dict[str, int], tuple[tuple, tuple]]:
    from ray.data.expressions import col

    from training.data.packed import shard_datasets

    location = dm.data_location
    manifest, datasets = shard_datasets(location, "classify", ["image", "label", "index"])
    counts = {s: manifest.splits[s].count for s in SPLITS}
    # Statistics from the training images the in-process path samples: every step-th one.
    step = max(1, counts["train"] // STATS_SAMPLE)
    limit = step * STATS_SAMPLE
    index = col("index")
    picked = datasets["train"].filter(expr=(index % step == 0) & (index < limit))
    rows = picked.map_batches(DecodeBatch(manifest.labels, dm.image_size, keep_index=True)).take_all()
    rows.sort(key=lambda row: row["index"])
    stats = channel_stats(torch.from_numpy(np.stack([r["x"] for r in rows])))
    facts = DataFacts(dm.name, location, manifest.digest[:16], counts)
    dm.labels, dm.skipped_images = list(manifest.labels), list(manifest.skipped_images)
    dm.split_overlap = manifest.overlap  # None for packs from before it was stored: not compared
    return datasets, facts, counts, stats


def _folder(dm: ImageDataModule) -> tuple[dict, DataFacts, dict[str, int], tuple[tuple, tuple]]:
    import ray.data

    if is_object_store(dm.data_location):
        return _bucket_folder(dm)
    labels, splits = dm.records()  # the in-process listing, unreadable files and split
    datasets = {split: ray.data.from_items([{"path": str(path), "label": labels[target]}
                                            for path, target in splits[split]])
                for split in SPLITS}
    return datasets, describe(dm), {s: len(splits[s]) for s in SPLITS}, (dm.mean, dm.std)


def _bucket_folder(dm) -> tuple[dict, DataFacts, dict[str, int], tuple[tuple, tuple]]:
    """A folder in a bucket, never copied to one node: the driver lists it (in ImageFolder's
    order); Ray Data tasks read and decode-check every object, and only the problems come back;
    the driver skips the unreadable ones and splits the rest as in-process training does
    (`FolderDataModule.arrange`); the statistics come from the same sampled training images,
    decoded by Ray Data tasks."""
    import ray.data

    parts, filesystem = list_tree(dm.data_location), s3_filesystem()
    urls = [url for folder in parts.values() for url, _ in folder.samples]
    checked = (ray.data.from_items([{"path": url} for url in urls])
               .map_batches(check_objects, fn_kwargs={"filesystem": filesystem},
                            batch_size=DECODE_BATCH).take_all())
    problems = {row["path"]: row["problem"] for row in checked}
    hashes = {row["path"]: row["sha256"] for row in checked}
    kept, dm.skipped_images = {}, []
    for name, folder in parts.items():
        names = [url for url, _ in folder.samples]
        readable, skipped = skip_unreadable(
            names, [f"class {folder.classes[t]!r}" for _, t in folder.samples], where=folder.where,
            checks={url: ImageCheck(None, problems[url]) if problems[url] else ImageCheck((0, 0))
                    for url in names})
        kept[name] = [sample for sample, ok in zip(folder.samples, readable) if ok]
        dm.skipped_images.extend(skipped)
    dm.labels = list((parts.get("train") or parts["all"]).classes)
    arranged = dm.arrange(kept)
    splits = dict(zip(SPLITS, (samples_of(s) for s in arranged), strict=True))
    dm.split_overlap = overlap_of_digests(
        {split: [(url, hashes[url]) for url, _ in splits[split]] for split in SPLITS
         if not (split == "val" and arranged[2] is arranged[1])})

    def objects(samples: list[tuple[str, int]]):
        items = [{"path": url, "label": dm.labels[target]} for url, target in samples]
        return ray.data.from_items(items).map_batches(
            fetch_objects, fn_kwargs={"filesystem": filesystem}, batch_size=DECODE_BATCH)

    step = max(1, len(splits["train"]) // STATS_SAMPLE)  # the images the in-process path samples
    sample = objects(splits["train"][::step][:STATS_SAMPLE])
    rows = sample.map_batches(DecodeBatch(dm.labels, dm.image_size), batch_size=DECODE_BATCH).take_all()
    stats = channel_stats(torch.from_numpy(np.stack([row["x"] for row in rows])))
    digest = hashlib.sha256(repr([(split, splits[split]) for split in SPLITS]).encode())
    counts = {split: len(splits[split]) for split in SPLITS}
    facts = DataFacts(dm.name, dm.data_location, digest.hexdigest()[:16], counts)
    return {split: objects(splits[split]) for split in SPLITS}, facts, counts, stats


def cache_decoded(counts: dict[str, int], size: int) -> bool:
    """Whether the decoded images (uint8, 3 channels) of every split fit in CACHE_SHARE of the
    cluster's object store memory: then they are decoded once and kept there, spread over the
    nodes whose tasks decoded them, instead of again every epoch (Ray Data's "cache the
    preprocessed dataset"; the per-epoch augmentation runs after it). Larger data sets stream."""
    import ray

    store = ray.cluster_resources().get("object_store_memory", 0)
    return sum(counts.values()) * 3 * size * size <= CACHE_SHARE * store


def plan(dm: ImageDataModule, augment: str, random_erasing: float,
         cache: bool | None = None) -> tuple[Ingest, dict]:
    """On the driver: the facts for the workers and the Ray Datasets they read ({split: Dataset}
    of `x`, `y` rows, decoded by Ray Data tasks). Classification images are kept decoded between
    epochs when `cache` says so, by default when they fit (`cache_decoded`)."""
    if dm.name not in STREAMED:
        raise WaldoError(f"data set {dm.name!r} is not read through Ray Data; those that are: "
                         f"{', '.join(STREAMED)}")
    if dm.task == "localize":  # boxes travel with their images (training.data.raydata_boxes)
        decoded, facts, counts, (mean, std) = plan_boxes(dm, augment, DECODE_BATCH)
    else:
        datasets, facts, counts, (mean, std) = (_packed if dm.name == "packed" else _folder)(dm)
        decode = DecodeBatch(dm.labels, dm.image_size)
        # Batches, not whole blocks: decoded images stream to the workers as they are made.
        decoded = {split: ds.map_batches(decode, batch_size=DECODE_BATCH) for split, ds in datasets.items()}
        keep = cache_decoded(counts, dm.image_size) if cache is None else cache
        if keep:
            decoded = {split: ds.materialize() for split, ds in decoded.items()}
        augment_batch = AugmentBatch(augment, dm.kind, dm.image_size, random_erasing)
        if augment_batch.transform is not None:  # a new draw every epoch, after the cache
            decoded["train"] = decoded["train"].map_batches(augment_batch, batch_size=DECODE_BATCH)
    dm.mean, dm.std = tuple(mean), tuple(std)
    for split, count in counts.items():
        if count == 0:
            raise WaldoError(f"{dm.data_location}: the {split} split is empty")
    return Ingest(dm.state_dict(), facts, counts), decoded


class ShardLoader:
    """One worker's shard of a split as (uint8 images, targets) torch batches. Its length is
    what Lightning shows and schedules by: the shard's rows (the split divided evenly among the
    workers, as Ray Train splits it) in batches."""

    def __init__(self, split: str, rows: int, batch_size: int, world_size: int, shuffle: bool):
        self.split, self.batch_size, self.shuffle = split, batch_size, shuffle
        self.rows = rows // world_size

    def __len__(self) -> int:
        return math.ceil(self.rows / self.batch_size)

    def __iter__(self):
        import ray.train

        shard = ray.train.get_dataset_shard(self.split)
        buffer = 4 * self.batch_size if self.shuffle else None
        # dtypes as the decoders make them: uint8 images; int64 classes or float32 box targets.
        for batch in shard.iter_torch_batches(batch_size=self.batch_size, local_shuffle_buffer_size=buffer):
            yield batch["x"], batch["y"]


class ShardData(ImageDataModule):
    """A Ray worker's data module when Ray Data feeds it: the source data module's facts
    (labels, statistics, size, what kind of data), with batches from this worker's shards."""

    def __init__(self, source: ImageDataModule, ingest: Ingest, world_size: int):
        super().__init__(batch_size=source.batch_size, image_size=source._image_size,
                         augment=source.augment, random_erasing=source.random_erasing)
        self.name, self.kind, self.task = source.name, source.kind, source.task
        self.in_channels, self.native_size = source.in_channels, source.native_size
        self.data_dir, self.data_location = source.data_dir, source.data_location
        self.load_state_dict(ingest.state)
        self.facts, self.counts, self.world_size = ingest.facts, ingest.counts, world_size

    def setup(self, stage: str | None = None) -> None:
        pass  # the driver planned the data; the batches come from Ray Data

    def _shard(self, split: str) -> ShardLoader:
        return ShardLoader(split, self.counts[split], self.batch_size, self.world_size,
                           shuffle=split == "train")

    def train_dataloader(self) -> ShardLoader:
        return self._shard("train")

    def val_dataloader(self) -> ShardLoader:
        return self._shard("val")

    def test_dataloader(self) -> ShardLoader:
        return self._shard("test")


__all__ = ["DATA_CPUS", "STREAMED", "DecodeBatch", "Ingest", "ShardData", "ShardLoader", "plan"]
