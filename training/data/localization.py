"""Data for single-object localization: images with at most one box and its class.

Each item is (uint8 image (C, H, W), target (5 + K,)) with target = [p_c, x, y, w, h, one-hot]
and the box normalized to the image size ((x, y) is the top-left corner). Training-time
augmentation moves the box with the image (torchvision transforms v2 with BoundingBoxes).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from training.data.base import SPLIT_SEED, ImageDataModule, channel_stats
from training.data.images import check_images, load_image, open_source, skip_unreadable
from training.data.leakage import split_overlap
from training.data.mnist5k import SOURCE as MNIST5K_SOURCE
from training.data.mnist5k import mnist5k, mnist5k_split
from training.errors import WaldoError

# raw item: (uint8 image (C, H, W), box (x, y, w, h) in pixels or None, class index or -1)
RawItem = tuple[torch.Tensor, "torch.Tensor | None", int]
# a user's labelled image: (the file, or its encoded bytes from a pack; box in pixels or None; label)
BoxRecord = tuple["Path | bytes", "list[float] | None", str]
STATS_IMAGES = 256  # normalization statistics of a user's localization data: its first training images


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
    """`--augment basic` for a localizer: a random shift and scale (and horizontal flip, for
    photos) applied to the image and its box together."""
    steps = [v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.9, 1.1)),
             v2.ClampBoundingBoxes()]
    if hflip:
        steps.insert(0, v2.RandomHorizontalFlip())
    return v2.Compose(steps)


class BoxDataModule(ImageDataModule):
    """A localization data module: its training split moves boxes with the images."""

    task = "localize"

    def box_augmentation(self, hflip: bool) -> v2.Transform | None:
        return box_augmentation(hflip) if self.augment == "basic" else None


def render_canvases(
    digits: np.ndarray, labels: np.ndarray, count: int, size: int, *, empty_fraction: float,
    scale: tuple[float, float], noise: float, clutter: int, rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Place one digit (or none) per canvas at a random position and scale.

    Returns uint8 canvases (N, 1, S, S), boxes (N, 4) xywh in pixels tight around the drawn
    strokes (NaN when empty) and labels (N,) (-1 when empty).
    """
    canvases = np.zeros((count, size, size), dtype=np.float32)
    a = digits.shape[-1] // 4  # clutter comes from near the middle of a digit, where strokes are
    b = a + max(3, 3 * digits.shape[-1] // 8)
    boxes = np.full((count, 4), np.nan, dtype=np.float32)
    out_labels = np.full(count, -1, dtype=np.int64)
    for i in range(count):
        for _ in range(clutter):  # small fragments of other digits, never a whole one
            frag = digits[rng.integers(len(digits))][a:b, a:b]
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


class LocalizationDigitsDataModule(BoxDataModule):
    """`localization-digits`: one real MNIST digit (or nothing) per canvas, from `mnist-5k`.

    Train, val and test canvases are drawn from disjoint digits (`mnist-5k`'s fixed split: test
    canvases only from its 1,000 test digits), so no digit is seen in training and then tested.
    Positions and scales are already random, so the recipe's default here is `--augment none`
    (`basic` moves the box with the image; it costs about 4 ms an image on CPU, more than the
    small networks' own step).
    """

    name = "localization-digits"
    source = MNIST5K_SOURCE  # where the digits came from, for the MLflow run
    in_channels = 1

    def __init__(self, *, canvas_size: int = 64, empty_fraction: float = 0.2, noise: float = 0.0,
                 clutter: int = 0, min_scale: float = 0.3, max_scale: float = 0.7,
                 train_size: int = 6000, eval_size: int = 1000, seed: int = SPLIT_SEED,
                 **kwargs):
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
        self.seed = seed

    def load(self):
        images, targets = mnist5k()
        digits = images[:, 0].numpy().astype(np.float32) / 255.0  # (5000, 28, 28) in [0, 1]
        classes = targets.numpy()
        splits = dict(zip(["train", "val", "test"], mnist5k_split(self.val_fraction)))
        self.labels = [str(d) for d in range(10)]
        out = {}
        for offset, (split, index) in enumerate(splits.items()):
            rng = np.random.default_rng([self.seed, offset])
            images, boxes, labels = render_canvases(
                digits[index.numpy()], classes[index.numpy()], self.sizes[split],
                self.native_size, rng=rng, **self.options)
            if split == "train":
                self.mean, self.std = channel_stats(images)
            transform = self.box_augmentation(hflip=False) if split == "train" else None
            out[split] = BoxDataset(_tensor_getter(images, boxes, labels), len(images), 10, transform)
        return out["train"], out["val"], out["test"]


def _tensor_getter(images, boxes, labels) -> Callable[[int], RawItem]:
    def get(i: int) -> RawItem:
        label = int(labels[i])
        return images[i], (boxes[i] if label >= 0 else None), label

    return get


class LocalizationFolderDataModule(BoxDataModule):
    """`localization-folder`: the user's images plus a CSV of `image,x,y,w,h,label`.

    Paths in the CSV are relative to `--data-dir` and stay inside it; boxes are in pixels of
    the original image; a row with an empty box means nothing is there. Every row is checked
    before training (`_read_rows`): a bad one stops the run with one line that names the file,
    the line and what is accepted. Images are read as RGB and resized to `--image-size` (128 by
    default), the boxes with them. The split is fixed (70/15/15), and its splits are compared
    by content (`split_overlap`): one image in two rows that land in two splits is found there.
    """

    name = "localization-folder"
    kind = "photos"
    native_size = 128
    in_channels = 3
    expects = "images and a labels CSV (image,x,y,w,h,label)"

    def __init__(self, *, csv_file: str = "labels.csv", hflip: bool = True, **kwargs):
        super().__init__(**kwargs)
        if Path(csv_file).name != csv_file or csv_file in ("", ".", ".."):
            raise WaldoError(f"csv_file {csv_file!r} must be a file name inside --data-dir, "
                             "e.g. labels.csv (no folders)")
        self.csv_file, self.hflip = csv_file, hflip
        self.splits: dict[str, list[BoxRecord]] | None = None  # set by `load`

    def _read_rows(self, root: Path) -> list[tuple[Path, list[float] | None, str]]:
        """The CSV's rows as (image, box in pixels or None, label), every one checked.

        A row is refused when it has the wrong number of columns, a box that is not four
        finite numbers with a positive width and height, a box with no label, an image path
        that leaves `root` (absolute, `..`, or a symlink out) or names no file, or a box that
        does not fit its image (see BOX_TOLERANCE). Rows whose image cannot be decoded are
        skipped as in `training.data.images.skip_unreadable`; the names go to `skipped_images`.
        """
        path = root / self.csv_file
        if not path.is_file():
            raise WaldoError(f"no {self.csv_file!r} in {str(root)!r}: expected a CSV with "
                             "columns image,x,y,w,h,label")
        parsed, problems = _parse_csv(path, root)
        checks = check_images([image for _, image, _, _ in parsed], mode="RGB")
        rows = []
        for n, image, box, label in parsed:
            size = checks[str(image)].size
            if box is not None and size is not None:
                box, problem = _fit_box(box, size, image.relative_to(root))
                if problem:
                    problems.append((n, problem))
            rows.append((image, box, label))
        if problems:
            raise _bad_rows(path, problems)
        groups = [f"class {label!r}" if box else "the rows without a box" for _, box, label in rows]
        readable, self.skipped_images = skip_unreadable(
            [image for image, _, _ in rows], groups, where=path, checks=checks)
        rows = [row for row, ok in zip(rows, readable) if ok]
        if len(rows) < 3:
            after = (f" left after skipping {len(self.skipped_images)} unreadable images"
                     if self.skipped_images else "")
            raise WaldoError(f"{path}: need at least 3 rows to split (got {len(rows)}{after})")
        return rows

    def records(self) -> tuple[list[str], dict[str, list[BoxRecord]]]:
        """The classes and each split's rows (image file, box in pixels or None, label), checked
        and split as training uses them (`waldo data pack` writes exactly these)."""
        if self.data_dir is None:
            raise WaldoError("data set 'localization-folder' needs --data-dir holding labels.csv")
        root = self.resolve_dir()
        rows = self._read_rows(root)
        labels = sorted({label for _, box, label in rows if box})
        if not labels:
            raise WaldoError(f"{root / self.csv_file}: no row has a box and a label")
        order = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
        n_test = n_val = max(1, round(0.15 * len(rows)))
        parts = {"train": order[n_test + n_val:], "val": order[n_test:n_test + n_val],
                 "test": order[:n_test]}
        splits = {split: [rows[int(j)] for j in idx] for split, idx in parts.items()}
        self.split_overlap = split_overlap(
            {split: [(str(image), image) for image, _, _ in split_rows]
             for split, split_rows in splits.items()})
        return labels, splits

    def load(self):
        self.labels, splits = self.records()
        self.splits = splits  # the rows of each split, for a distributed run's Ray Data ingest
        index = {label: i for i, label in enumerate(self.labels)}
        size = self.image_size
        k = len(self.labels)
        out = {}
        for split, rows in splits.items():
            transform = self.box_augmentation(self.hflip) if split == "train" else None
            out[split] = BoxDataset(lambda i, rows=rows: read_box_record(rows[i], index, size),
                                    len(rows), k, transform)
        first = splits["train"][:STATS_IMAGES]
        self.mean, self.std = channel_stats(torch.stack([read_box_record(r, index, size)[0] for r in first]))
        return out["train"], out["val"], out["test"]


def read_box_record(record: BoxRecord, index: dict[str, int], size: int) -> RawItem:
    """A user's labelled image (its file or encoded bytes, box in pixels or None, label) as a
    raw item: the RGB image resized to `size` x `size`, the box with it."""
    source, box, label = record
    image = tv_tensors.Image(v2.functional.pil_to_tensor(load_image(open_source(source), "RGB")))
    resize = v2.Resize((size, size), antialias=True)
    if box is None:
        return resize(image).as_subclass(torch.Tensor), None, -1
    boxes = tv_tensors.BoundingBoxes([box], format="XYWH", canvas_size=image.shape[-2:])
    image, boxes = resize(image, boxes)
    return image.as_subclass(torch.Tensor), boxes[0].as_subclass(torch.Tensor), index[label]


# A box may overhang its image by up to this many pixels, and is then clipped to it: tools
# disagree on whether the right and bottom edges are inclusive, and some round half pixels.
# Anything further out is a wrong box (another image's, or another unit), so it is refused.
BOX_TOLERANCE = 1.0
_COLUMNS = ("image", "x", "y", "w", "h", "label")
_SHOWN_PROBLEMS = 5  # bad rows named in the error; the rest are counted
_NO_BOX = "or x,y,w,h and label all empty when nothing is in the image"


def _parse_csv(path: Path, root: Path) -> tuple[list[tuple[int, Path, list[float] | None, str]],
                                                list[tuple[int, str]]]:
    """([(line, image, box or None, label)], [(line, problem)]) for a labels CSV; lines are
    1-based lines of the file (the header is line 1)."""
    parsed, problems = [], []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [c.strip() for c in next(reader, [])]
            missing = [c for c in _COLUMNS if c not in header]
            if missing:
                raise WaldoError(f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                                 "expected image,x,y,w,h,label")
            col = {c: header.index(c) for c in _COLUMNS}
            for row in reader:
                n = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue  # a blank line
                if len(row) != len(header):
                    problems.append((n, f"{len(row)} columns, expected {len(header)} "
                                        f"({','.join(header)})"))
                    continue
                cells = {c: row[col[c]].strip() for c in _COLUMNS}
                image, problem = _image_path(root, cells["image"])
                box, box_problem = _parse_box([cells[k] for k in "xywh"])
                if box is not None and not cells["label"]:
                    box_problem = box_problem or ("a box with an empty label; accepted: a class "
                                                  f"name, {_NO_BOX}")
                for p in (problem, box_problem):
                    if p:
                        problems.append((n, p))
                if image is not None and not box_problem:
                    parsed.append((n, image, box, cells["label"] if box else ""))
    except csv.Error as exc:
        raise WaldoError(f"{path} line {reader.line_num}: not a valid CSV row ({exc})") from None
    except UnicodeDecodeError as exc:
        raise WaldoError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         "expected a CSV with columns image,x,y,w,h,label") from None
    return parsed, problems


def _image_path(root: Path, name: str) -> tuple[Path | None, str | None]:
    """(the image file, None) for a CSV image cell, or (None, what is wrong with it)."""
    accepted = f"accepted: a path relative to --data-dir {str(root)!r} that stays inside it"
    if not name:
        return None, f"the image column is empty; {accepted}"
    given = Path(name)
    if given.is_absolute() or given.drive:
        return None, f"image {name!r} is an absolute path; {accepted}"
    image = root / given
    if not image.resolve().is_relative_to(root.resolve()):  # `..` or a symlink out
        return None, f"image {name!r} leads outside --data-dir; {accepted}"
    if not image.is_file():
        return None, f"image {str(image)!r} does not exist"
    return image, None


def _parse_box(fields: list[str]) -> tuple[list[float] | None, str | None]:
    """(box or None for an empty one, None) for the x,y,w,h cells, or (None, what is wrong)."""
    if not any(fields):
        return None, None
    try:
        box = [float(v) for v in fields]
    except ValueError:
        return None, (f"box {fields} is not four numbers; accepted: x,y,w,h in pixels, {_NO_BOX}")
    odd = [f"{k}={v}" for k, v in zip("xywh", fields) if not math.isfinite(float(v))]
    if odd:
        return None, f"box has {', '.join(odd)}; accepted: finite numbers (pixels)"
    if box[2] <= 0 or box[3] <= 0:
        return None, (f"box has w={fields[2]}, h={fields[3]}; accepted: a width and a height "
                      "above 0 (pixels)")
    return box, None


def _fit_box(box: list[float], size: tuple[int, int], name: Path) -> tuple[list[float], str | None]:
    """The box clipped to its image (width, height), or a problem when it lies further out than
    BOX_TOLERANCE or has nothing left inside."""
    x, y, w, h = box
    width, height = size
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    tol = BOX_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol or x1 <= x0 or y1 <= y0:
        return box, (f"box x={x:g}, y={y:g}, w={w:g}, h={h:g} does not fit the {width}x{height} "
                     f"image {str(name)!r}; accepted: x >= 0, y >= 0, x + w <= {width}, "
                     f"y + h <= {height} (pixels, {tol:g} pixel of slack)")
    return [x0, y0, x1 - x0, y1 - y0], None


def _bad_rows(path: Path, problems: list[tuple[int, str]]) -> WaldoError:
    """One line for all the bad rows of a CSV: each named, up to _SHOWN_PROBLEMS, then a count."""
    problems = sorted(problems)
    if len(problems) == 1:
        return WaldoError(f"{path} line {problems[0][0]}: {problems[0][1]}")
    shown = "; ".join(f"line {n}: {text}" for n, text in problems[:_SHOWN_PROBLEMS])
    more = len(problems) - _SHOWN_PROBLEMS
    return WaldoError(f"{path}: {len(problems)} bad rows: {shown}"
                      + (f"; and {more} more" if more > 0 else ""))
