"""Localization data: `localization-digits` (synthetic canvases), `localization-folder` (the
user's images plus labels.csv), box-moving augmentation, and the spec checks around them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import create_datamodule
from training.data.localization import (
    BoxDataset,
    LocalizationDigitsDataModule,
    LocalizationFolderDataModule,
    box_augmentation,
)
from training.errors import WaldoError
from training.spec import DataSpec, TrainSpec
from training.spec.flags import spec_from_args as _spec_from_args
from waldo.cli import build_parser


def all_items(ds) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return torch.stack(images), torch.stack(targets)


def digits_dm(**kwargs) -> LocalizationDigitsDataModule:
    kwargs = {"train_size": 64, "eval_size": 32, **kwargs}
    dm = LocalizationDigitsDataModule(**kwargs)
    dm.setup("fit")
    return dm


def bright_extent(image: torch.Tensor, threshold: int) -> tuple[int, int, int, int]:
    """(x_min, y_min, x_max_exclusive, y_max_exclusive) of pixels above threshold (any channel)."""
    ys, xs = torch.nonzero((image > threshold).any(dim=0), as_tuple=True)
    assert len(xs), "no bright pixel"
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def assert_box_covers(box_px: torch.Tensor, extent: tuple[int, int, int, int], tol: float):
    x, y, w, h = box_px.tolist()
    x0, y0, x1, y1 = extent
    assert x - tol <= x0 and y - tol <= y0, (box_px.tolist(), extent)
    assert x1 <= x + w + tol and y1 <= y + h + tol, (box_px.tolist(), extent)


# --- localization-digits --------------------------------------------------------------------
@pytest.fixture(scope="module")
def canvases() -> LocalizationDigitsDataModule:
    return digits_dm(train_size=1000)


def test_digits_items_are_uint8_canvases_and_target_vectors(canvases):
    assert (canvases.in_channels, canvases.image_size, canvases.num_classes) == (1, 64, 10)
    assert canvases.labels == [str(d) for d in range(10)]
    sizes = [len(canvases.train_set), len(canvases.val_set), len(canvases.test_set)]
    assert sizes == [1000, 32, 32]
    image, target = canvases.train_set[0]
    assert image.shape == (1, 64, 64) and image.dtype == torch.uint8
    assert target.shape == (15,) and target.dtype == torch.float32


def test_digits_targets_are_well_formed(canvases):
    _, targets = all_items(canvases.train_set)
    assert set(targets[:, 0].tolist()) == {0.0, 1.0}
    empty, present = targets[targets[:, 0] == 0], targets[targets[:, 0] == 1]
    assert torch.equal(empty, torch.zeros_like(empty))  # nothing but zeros when empty
    box = present[:, 1:5]
    assert (box >= 0).all() and (box <= 1).all()
    assert (box[:, 2:] > 0).all()
    assert (box[:, 0] + box[:, 2] <= 1 + 1e-6).all() and (box[:, 1] + box[:, 3] <= 1 + 1e-6).all()
    onehot = present[:, 5:]
    assert torch.equal(onehot.sum(1), torch.ones(len(present)))
    assert set(onehot.unique().tolist()) == {0.0, 1.0}
    assert set(onehot.argmax(1).tolist()) == set(range(10))  # every digit shows up


def test_digits_strokes_lie_inside_the_box(canvases):
    """The box is tight around the strokes: every pixel brighter than 0.25 (uint8 > 64 after
    rounding) is inside it, and the strokes touch all four sides. Empty canvases are black."""
    images, targets = all_items(canvases.train_set)
    for image, target in zip(images, targets, strict=True):
        if target[0] == 0:
            assert image.max() == 0
            continue
        box = target[1:5] * 64
        assert_box_covers(box, bright_extent(image, 64), tol=1e-3)
        x, y, w, h = (int(round(v)) for v in box.tolist())
        inside = image[0, y:y + h, x:x + w]
        assert inside[:, 0].max() >= 64 and inside[:, -1].max() >= 64  # left and right edges
        assert inside[0].max() >= 64 and inside[-1].max() >= 64  # top and bottom edges


def test_digits_empty_fraction_default_is_a_fifth(canvases):
    # 1000 canvases: the standard error of the fraction is about 0.013
    _, targets = all_items(canvases.train_set)
    assert (targets[:, 0] == 0).float().mean().item() == pytest.approx(0.2, abs=0.05)


def test_digits_empty_fraction_half():
    _, targets = all_items(digits_dm(train_size=1000, empty_fraction=0.5).train_set)
    assert (targets[:, 0] == 0).float().mean().item() == pytest.approx(0.5, abs=0.05)


def test_digits_are_deterministic_by_seed():
    a, b, c = digits_dm(), digits_dm(), digits_dm(seed=7)
    for split in ("train_set", "val_set", "test_set"):
        ia, ta = all_items(getattr(a, split))
        ib, tb = all_items(getattr(b, split))
        assert torch.equal(ia, ib) and torch.equal(ta, tb), split
    ic, _ = all_items(c.train_set)
    assert not torch.equal(all_items(a.train_set)[0], ic)
    assert (a.mean, a.std) == (b.mean, b.std)


def test_digits_canvas_size_is_configurable():
    dm = digits_dm(canvas_size=48)
    assert dm.image_size == 48 and dm.native_size == 48
    images, targets = all_items(dm.val_set)
    assert images.shape == (32, 1, 48, 48)
    for image, target in zip(images, targets, strict=True):
        if target[0] == 1:
            assert_box_covers(target[1:5] * 48, bright_extent(image, 64), tol=1e-3)


@pytest.mark.parametrize("option", [{"clutter": 3}, {"noise": 0.1}])
def test_clutter_and_noise_change_images_but_stay_deterministic(option):
    plain, _ = all_items(digits_dm().train_set)
    a, ta = all_items(digits_dm(**option).train_set)
    b, tb = all_items(digits_dm(**option).train_set)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(a, plain)
    empty = ta[:, 0] == 0
    assert empty.any() and a[empty].float().max() > 0  # even empty canvases are not black


@pytest.mark.parametrize("kwargs,match", [
    ({"empty_fraction": 1.0}, "empty_fraction"),
    ({"empty_fraction": -0.1}, "empty_fraction"),
    ({"min_scale": 0.8, "max_scale": 0.5}, "min_scale"),
    ({"canvas_size": 8}, "canvas_size"),
])
def test_digits_bad_options(kwargs, match):
    with pytest.raises(WaldoError, match=match):
        LocalizationDigitsDataModule(**kwargs)


# --- augmentation moves the box with the image ----------------------------------------------
def test_augmentation_moves_the_box_with_the_image():
    image = torch.zeros(1, 40, 60, dtype=torch.uint8)
    image[:, 10:25, 5:20] = 255  # x 5..19, y 10..24: box (5, 10, 15, 15)
    box = torch.tensor([5.0, 10.0, 15.0, 15.0])
    ds = BoxDataset(lambda i: (image, box, 2), 1, 3, box_augmentation(hflip=True))
    flipped = moved = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out, target = ds[0]
        assert out.shape == (1, 40, 60) and out.dtype == torch.uint8
        assert target[0] == 1 and target[5:].tolist() == [0, 0, 1]
        extent = bright_extent(out, 127)
        # nearest-neighbour resampling: the drawn edge may sit up to a pixel off the box
        assert_box_covers(target[1:5] * torch.tensor([60, 40, 60, 40]), extent, tol=1.0)
        flipped += extent[0] > 30  # the rectangle ended up on the right half
        moved += extent[:2] != (5, 10)
    assert flipped >= 3 and moved >= 15  # the augmentation did do something


# --- localization-folder --------------------------------------------------------------------
# row: (file, (width, height), box (x, y, w, h) in pixels or None, label)
FOLDER_ROWS = [
    ("a.png", (100, 80), (10, 20, 30, 40), "cat"),
    ("b.png", (64, 64), (32, 0, 32, 16), "dog"),
    ("c.png", (50, 120), (5, 60, 20, 50), "cat"),
    ("d.png", (90, 90), None, ""),
    ("sub/e.png", (120, 60), (60, 10, 40, 30), "dog"),
    ("f.png", (70, 100), (0, 0, 35, 50), "cat"),
    ("g.png", (80, 80), (20, 20, 40, 40), "dog"),
]


def write_folder(root: Path, rows=FOLDER_ROWS, header: str = "image,x,y,w,h,label") -> Path:
    """PNGs with a white rectangle where the box says. The green channel is 10 * row + 5
    everywhere, so a resized image still tells which row it came from."""
    for n, (name, (w, h), box, _) in enumerate(rows):
        pixels = np.zeros((h, w, 3), dtype=np.uint8)
        pixels[..., 1] = 10 * n + 5
        if box:
            x, y, bw, bh = box
            pixels[y:y + bh, x:x + bw, 0] = 255
            pixels[y:y + bh, x:x + bw, 2] = 255
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / name)
    lines = [header]
    for name, _, box, label in rows:
        coords = [str(v) for v in box] if box else ["", "", "", ""]
        lines.append(",".join([name, *coords, label]))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def folder_spec(root: Path, augment: str | None = None, **data_args) -> DataSpec:
    given = {"augment": augment} if augment else {}  # left out: the recipe's default
    return TrainSpec(task="localize", data="localization-folder", data_dir=str(root),
                     image_size=32, data_args=data_args, **given).data_spec()


def test_folder_labels_images_and_boxes(tmp_path):
    dm = create_datamodule(folder_spec(write_folder(tmp_path), augment="none"))
    assert isinstance(dm, LocalizationFolderDataModule)
    dm.setup("fit")
    assert dm.labels == ["cat", "dog"]
    assert (dm.in_channels, dm.image_size, dm.num_classes) == (3, 32, 2)
    assert len(dm.mean) == 3 and len(dm.std) == 3
    seen = []
    for ds in (dm.train_set, dm.val_set, dm.test_set):
        for i in range(len(ds)):
            image, target = ds[i]
            assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
            assert target.shape == (7,)
            n = (int(image[1, 0, 0]) - 5) // 10
            seen.append(n)
            _, (w, h), box, label = FOLDER_ROWS[n]
            if box is None:
                assert torch.equal(target, torch.zeros(7))
                assert image[0].max() == 0
                continue
            assert target[0] == 1
            expected = [box[0] / w, box[1] / h, box[2] / w, box[3] / h]
            assert target[1:5].tolist() == pytest.approx(expected, abs=1e-5)
            assert target[5:].tolist() == ([1, 0] if label == "cat" else [0, 1])
            # the white rectangle, resized, still lies in the (resized) box
            assert_box_covers(target[1:5] * 32, bright_extent(image[[0]], 127), tol=1.0)
    assert sorted(seen) == list(range(len(FOLDER_ROWS)))  # each row in exactly one split
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [5, 1, 1]


def test_folder_training_augmentation_keeps_boxes_on_the_rectangles(tmp_path):
    dm = create_datamodule(folder_spec(write_folder(tmp_path)))  # basic and hflip by default
    dm.setup("fit")
    for seed in range(5):
        torch.manual_seed(seed)
        for i in range(len(dm.train_set)):
            image, target = dm.train_set[i]
            if target[0] == 1:
                assert_box_covers(target[1:5] * 32, bright_extent(image[[0]], 127), tol=1.5)


@pytest.mark.parametrize("case,match", [
    ("missing-column", r"missing column\(s\) h"),
    ("non-numeric-box", r"line 3: box .* not four numbers"),
    ("missing-image", r"line 2: image .*nope\.png.* does not exist"),
    ("no-csv", r"labels\.csv"),
    ("too-few-rows", r"at least 3 rows"),
    ("no-labels", r"no row has a box"),
])
def test_folder_bad_csv_is_a_user_error(tmp_path, case, match):
    rows = list(FOLDER_ROWS)
    header = "image,x,y,w,h,label"
    if case == "missing-column":
        header = "image,x,y,w,label"
    if case == "too-few-rows":
        rows = rows[:2]
    if case == "no-labels":
        rows = [(f"{i}.png", (20, 20), None, "") for i in range(4)]
    write_folder(tmp_path, rows, header)
    csv = tmp_path / "labels.csv"
    lines = csv.read_text().splitlines()
    if case == "non-numeric-box":
        lines[2] = "b.png,ten,0,32,16,dog"
    if case == "missing-image":
        lines[1] = lines[1].replace("a.png", "nope.png")
    if case == "missing-column":
        cells = [line.split(",") for line in lines[1:]]
        lines = [header] + [",".join(c[:4] + c[5:]) for c in cells]  # drop the h column
    csv.write_text("\n".join(lines) + "\n")
    if case == "no-csv":
        csv.unlink()
    dm = create_datamodule(folder_spec(tmp_path))
    with pytest.raises(WaldoError, match=match):
        dm.setup("fit")


def test_folder_needs_a_data_dir():
    dm = create_datamodule(TrainSpec(task="localize", data="localization-folder").data_spec())
    with pytest.raises(WaldoError, match="--data-dir"):
        dm.setup("fit")


# --- the spec around the data ---------------------------------------------------------------
@pytest.mark.parametrize("task,data,names", [
    ("classify", "localization-digits", ["'localization-digits'", "'localize'", "digits"]),
    ("localize", "digits",
     ["'digits'", "'classify'", "localization-digits", "localization-folder"]),
    ("classify", "localization-folder", ["'localization-folder'"]),
])
def test_task_and_data_must_match(task, data, names):
    with pytest.raises(WaldoError) as info:
        create_datamodule(DataSpec(task=task, name=data))
    for name in names:
        assert name in str(info.value)


def test_unknown_data_arg_lists_the_accepted_options():
    spec = TrainSpec(task="localize", data="localization-digits", data_args={"train_sise": 64})
    with pytest.raises(WaldoError) as info:
        create_datamodule(spec.data_spec())
    message = str(info.value)
    assert "train_sise" in message
    for option in ("train_size", "eval_size", "empty_fraction", "canvas_size", "clutter", "noise"):
        assert option in message


def test_data_arg_flags_reach_the_data_module():
    args = build_parser().parse_args([
        "train", "--task", "localize", "--data", "localization-digits",
        "--data-arg", "train_size=64", "--data-arg", "empty_fraction=0.5",
        "--data-arg", "canvas_size=48",
    ])
    spec = _spec_from_args(args)
    assert spec.data_args == {"train_size": 64, "empty_fraction": 0.5, "canvas_size": 48}
    dm = create_datamodule(spec.data_spec())
    dm.setup("fit")
    assert len(dm.train_set) == 64 and dm.image_size == 48
