"""Ray Data ingest of localization data (`localization-folder`, `localization-packed`) for
distributed runs: the stages of `training.data.raydata`, with each box carried through its
image's resize and the training split's augmentation (torchvision v2 with BoundingBoxes, as
in-process).

    driver          a folder: reads and checks its CSV and images and splits the rows, exactly as
                    in-process (the data module's own `setup`); a pack: reads the manifest,
                    checks the shards' footers, and has Ray Data tasks decode the first training
                    images for the normalization statistics
    Ray Data tasks  read the files or the Parquet shards, decode, resize, augment, and write
                    each row's target vector [p_c, x, y, w, h, one-hot] (`BoxDataset`)
"""

from __future__ import annotations

import numpy as np
import torch

from training.data.base import channel_stats
from training.data.localization import (
    STATS_IMAGES,
    BoxDataset,
    LocalizationFolderDataModule,
    box_augmentation,
    read_box_record,
)
from training.data.provenance import DataFacts, describe

SPLITS = ("train", "val", "test")
STREAMED_BOXES = ("localization-folder", "localization-packed")


def decode_boxes(batch: dict[str, np.ndarray], labels: list[str], size: int,
                 augment: bool = False, hflip: bool = True) -> dict[str, np.ndarray]:
    """A Ray Data batch of labelled images (`image` bytes or `path`, `box` in pixels or empty,
    `label`) -> `x` uint8 (N, C, S, S) and `y` float32 (N, 5 + K), as `BoxDataset` yields them."""
    index = {label: i for i, label in enumerate(labels)}
    sources = batch["image"] if "image" in batch else batch["path"]
    rows = [(source, [float(v) for v in box] if box is not None and len(box) else None, str(label))
            for source, box, label in zip(sources, batch["box"], batch["label"], strict=True)]
    items = BoxDataset(lambda i: read_box_record(rows[i], index, size), len(rows), len(labels),
                       box_augmentation(hflip) if augment else None)
    pairs = [items[i] for i in range(len(rows))]
    return {"x": torch.stack([x for x, _ in pairs]).numpy(),
            "y": torch.stack([y for _, y in pairs]).numpy()}


def _folder(dm: LocalizationFolderDataModule):
    import ray.data

    dm.setup("fit")  # the in-process reading of the CSV, its checks, split and statistics
    datasets = {split: ray.data.from_items([{"path": str(path), "box": box or [], "label": label}
                                            for path, box, label in dm.splits[split]])
                for split in SPLITS}
    counts = {split: len(dm.splits[split]) for split in SPLITS}
    return datasets, describe(dm), counts, (dm.mean, dm.std)


def _packed(dm: LocalizationFolderDataModule):
    from ray.data.expressions import col

    from training.data.packed import shard_datasets

    location = dm.data_location
    manifest, datasets = shard_datasets(location, "localize", ["image", "box", "label", "index"])
    first = datasets["train"].filter(expr=col("index") < STATS_IMAGES)
    rows = first.map_batches(decode_boxes, fn_kwargs={"labels": manifest.labels,
                                                      "size": dm.image_size}).take_all()
    stats = channel_stats(torch.from_numpy(np.stack([row["x"] for row in rows])))
    counts = {split: manifest.splits[split].count for split in SPLITS}
    dm.labels, dm.skipped_images = list(manifest.labels), list(manifest.skipped_images)
    dm.split_overlap = manifest.overlap  # None for packs from before it was stored: not compared
    return datasets, DataFacts(dm.name, location, manifest.digest[:16], counts), counts, stats


def plan_boxes(dm: LocalizationFolderDataModule, augment: str, decode_batch: int):
    """({split: Dataset of `x`, `y` rows}, facts, counts, (mean, std)) of a localization data set,
    its training split augmented with the boxes when `augment` is "basic"."""
    datasets, facts, counts, stats = (_packed if dm.name == "localization-packed" else _folder)(dm)
    decoded = {split: ds.map_batches(decode_boxes, batch_size=decode_batch, fn_kwargs={
        "labels": dm.labels, "size": dm.image_size, "augment": split == "train" and augment == "basic",
        "hflip": dm.hflip}) for split, ds in datasets.items()}
    return decoded, facts, counts, stats


__all__ = ["STREAMED_BOXES", "decode_boxes", "plan_boxes"]
