"""Data for single-object localization: images with at most one box and its class.

Each item is (uint8 image (C, H, W), target (5 + K,)) with target = [p_c, x, y, w, h, one-hot]
and the box normalized to the image size ((x, y) is the top-left corner). Training-time
augmentation moves the box with the image (torchvision transforms v2 with BoundingBoxes).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from training.data.base import SPLIT_SEED, ImageDataModule, channel_stats
from training.data.digits import split_indices
from training.errors import WaldoError

# raw item: (uint8 image (C, H, W), box (x, y, w, h) in pixels or None, class index or -1)
RawItem = tuple[torch.Tensor, "torch.Tensor | None", int]


class BoxDataset(Dataset):
    """Turns raw items into (image, target vector), augmenting image and box together."""

    def __init__(self, get: Callable[[int], RawItem], length: int, num_classes: int,
                 transform: v2.Transform | None = None):
        self.get, self.length, self.num_classes, self.transform = get, length, num_classes, transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        image, box, label = self.get(i)
        h, w = image.shape[-2:]
        if self.transform is not None:
            if box is None:
                image = self.transform(tv_tensors.Image(image))
            else:
                boxes = tv_tensors.BoundingBoxes(box[None], format="XYWH", canvas_size=(h, w))
                image, boxes = self.transform(tv_tensors.Image(image), boxes)
                box = boxes[0].as_subclass(torch.Tensor)
                if box[2] < 1 or box[3] < 1:  # pushed out of the picture: nothing left to find
                    box, label = None, -1
            h, w = image.shape[-2:]
        target = torch.zeros(5 + self.num_classes)
        if box is not None:
            target[0] = 1.0
            target[1:5] = box.float() / torch.tensor([w, h, w, h], dtype=torch.float32)
            target[5 + label] = 1.0
        return image.as_subclass(torch.Tensor), target


def box_augmentation(hflip: bool) -> v2.Transform:
    steps = [v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.9, 1.1)),
             v2.ClampBoundingBoxes()]
    if hflip:
        steps.insert(0, v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def render_canvases(
    digits: np.ndarray, labels: np.ndarray, count: int, size: int, *, empty_fraction: float,
    scale: tuple[float, float], noise: float, clutter: int, rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Place one digit (or none) per canvas at a random position and scale.

    Returns uint8 canvases (N, 1, S, S), boxes (N, 4) xywh in pixels tight around the drawn
    strokes (NaN when empty) and labels (N,) (-1 when empty).
    """
    canvases = np.zeros((count, size, size), dtype=np.float32)
    boxes = np.full((count, 4), np.nan, dtype=np.float32)
    out_labels = np.full(count, -1, dtype=np.int64)
    for i in range(count):
        for _ in range(clutter):  # small fragments of other digits, never a whole one
            frag = digits[rng.integers(len(digits))][2:5, 2:5]
            side = int(rng.integers(3, max(4, size // 10)))
            patch = _resize(frag, side) * rng.uniform(0.3, 0.8)
            y0, x0 = rng.integers(0, size - side + 1, size=2)
            region = canvases[i, y0:y0 + side, x0:x0 + side]
            canvases[i, y0:y0 + side, x0:x0 + side] = np.maximum(region, patch)
        if rng.random() >= empty_fraction:
            k = rng.integers(len(digits))
            side = int(round(rng.uniform(*scale) * size))
            patch = _resize(digits[k], side)
            y0, x0 = rng.integers(0, size - side + 1, size=2)
            region = canvases[i, y0:y0 + side, x0:x0 + side]
            canvases[i, y0:y0 + side, x0:x0 + side] = np.maximum(region, patch)
            ys, xs = np.nonzero(patch > 0.25)
            boxes[i] = (x0 + xs.min(), y0 + ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            out_labels[i] = labels[k]
    if noise > 0:
        canvases += rng.normal(0, noise, canvases.shape).astype(np.float32)
    images = torch.from_numpy((canvases.clip(0, 1) * 255).round().astype(np.uint8)).unsqueeze(1)
    return images, torch.from_numpy(boxes), torch.from_numpy(out_labels)


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()


class LocalizationDigitsDataModule(ImageDataModule):
    """`localization-digits`: one real digit (or nothing) per canvas, from scikit-learn's digits.

    Train, val and test canvases are drawn from disjoint digits (the `digits` split), so no
    digit is seen in training and then tested. Positions and scales are already random, so
    the box-moving augmentation is off by default here (`augment=true` turns it on; it costs
    about 4 ms an image on CPU, more than the small networks' own step).
    """

    name = "localization-digits"
    task = "localize"
    in_channels = 1

    def __init__(self, *, canvas_size: int = 64, empty_fraction: float = 0.2, noise: float = 0.0,
                 clutter: int = 0, min_scale: float = 0.3, max_scale: float = 0.7,
                 train_size: int = 6000, eval_size: int = 1000, seed: int = SPLIT_SEED,
                 augment: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= empty_fraction < 1:
            raise WaldoError(f"empty_fraction must be in [0, 1) (got {empty_fraction})")
        if not 0 < min_scale <= max_scale <= 1:
            raise WaldoError(f"need 0 < min_scale <= max_scale <= 1 (got {min_scale}, {max_scale})")
        if canvas_size < 16:
            raise WaldoError(f"canvas_size must be at least 16 (got {canvas_size})")
        self.native_size = canvas_size
        self.options = dict(empty_fraction=empty_fraction, noise=noise, clutter=clutter,
                            scale=(min_scale, max_scale))
        self.sizes = {"train": train_size, "val": eval_size, "test": eval_size}
        self.seed, self.augment = seed, augment

    def load(self):
        bunch = load_digits()
        digits = bunch.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
        targets = torch.from_numpy(bunch.target).long()
        splits = dict(zip(["train", "val", "test"], split_indices(targets, self.val_fraction)))
        self.labels = [str(d) for d in range(10)]
        out = {}
        for offset, (split, index) in enumerate(splits.items()):
            rng = np.random.default_rng([self.seed, offset])
            images, boxes, labels = render_canvases(
                digits[index.numpy()], bunch.target[index.numpy()], self.sizes[split],
                self.native_size, rng=rng, **self.options)
            if split == "train":
                self.mean, self.std = channel_stats(images)
            transform = box_augmentation(hflip=False) if split == "train" and self.augment else None
            out[split] = BoxDataset(_tensor_getter(images, boxes, labels), len(images), 10, transform)
        return out["train"], out["val"], out["test"]


def _tensor_getter(images, boxes, labels) -> Callable[[int], RawItem]:
    def get(i: int) -> RawItem:
        label = int(labels[i])
        return images[i], (boxes[i] if label >= 0 else None), label

    return get


class LocalizationFolderDataModule(ImageDataModule):
    """`localization-folder`: the user's images plus a CSV of `image,x,y,w,h,label`.

    Paths in the CSV are relative to `--data-dir`; boxes are in pixels of the original image;
    a row with an empty box means nothing is there. Images are read as RGB and resized to
    `--image-size` (128 by default), the boxes with them. The split is fixed (70/15/15).
    """

    name = "localization-folder"
    task = "localize"
    native_size = 128
    in_channels = 3

    def __init__(self, *, csv_file: str = "labels.csv", augment: bool = True, hflip: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.csv_file, self.augment, self.hflip = csv_file, augment, hflip

    def _read_rows(self, root: Path) -> list[tuple[Path, list[float] | None, str]]:
        path = root / self.csv_file
        if not path.is_file():
            raise WaldoError(f"no {self.csv_file!r} in {str(root)!r}: expected a CSV with "
                             "columns image,x,y,w,h,label")
        rows = []
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"image", "x", "y", "w", "h", "label"} - set(reader.fieldnames or [])
            if missing:
                raise WaldoError(f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                                 "expected image,x,y,w,h,label")
            for n, row in enumerate(reader, start=2):
                fields = [row[k].strip() for k in "xywh"]
                try:
                    box = None if not any(fields) else [float(v) for v in fields]
                except ValueError:
                    raise WaldoError(f"{path} line {n}: box {fields} is not four numbers") from None
                image = root / row["image"].strip()
                if not image.is_file():
                    raise WaldoError(f"{path} line {n}: image {str(image)!r} does not exist")
                rows.append((image, box, row["label"].strip() if box else ""))
        if len(rows) < 3:
            raise WaldoError(f"{path}: need at least 3 rows to split (got {len(rows)})")
        return rows

    def load(self):
        if self.data_dir is None:
            raise WaldoError("data set 'localization-folder' needs --data-dir holding labels.csv")
        root = self.resolve_dir()
        rows = self._read_rows(root)
        self.labels = sorted({label for _, box, label in rows if box})
        if not self.labels:
            raise WaldoError(f"{root / self.csv_file}: no row has a box and a label")
        index = {label: i for i, label in enumerate(self.labels)}
        resize = v2.Resize((self.image_size, self.image_size), antialias=True)

        def get(i: int) -> RawItem:
            path, box, label = rows[i]
            image = tv_tensors.Image(v2.functional.pil_to_tensor(Image.open(path).convert("RGB")))
            if box is None:
                return resize(image).as_subclass(torch.Tensor), None, -1
            boxes = tv_tensors.BoundingBoxes([box], format="XYWH", canvas_size=image.shape[-2:])
            image, boxes = resize(image, boxes)
            return image.as_subclass(torch.Tensor), boxes[0].as_subclass(torch.Tensor), index[label]

        order = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
        n_test = n_val = max(1, round(0.15 * len(rows)))
        parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
                 "train": order[n_test + n_val:]}
        k = len(self.labels)
        out = {}
        for split, idx in parts.items():
            idx = [int(j) for j in idx]
            transform = box_augmentation(self.hflip) if split == "train" and self.augment else None
            out[split] = BoxDataset(lambda i, idx=idx: get(idx[i]), len(idx), k, transform)
        sample = torch.stack([get(j)[0] for j in parts["train"][:256]])
        self.mean, self.std = channel_stats(sample)
        return out["train"], out["val"], out["test"]
