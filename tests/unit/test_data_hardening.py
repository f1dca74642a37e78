"""Partly broken user data (issue 12): unreadable files in image folders are found before
training and skipped with a warning each, odd image modes come out as sensible RGB, and every
row of a localization labels.csv is checked, with one line naming what is wrong."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.images import BLUE, RED, classes, solid, text_named_jpg, truncated_jpeg, zero_bytes

from training.data.folder import FolderDataModule
from training.data.localization import LocalizationFolderDataModule
from training.errors import WaldoError


def every_item(dm) -> list:
    """Read every item of every split, as training and testing would."""
    return [ds[i] for ds in (dm.train_set, dm.val_set, dm.test_set) for i in range(len(ds))]


def warning_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "waldo.data" and r.levelno == logging.WARNING]


# --- image folders: unreadable files --------------------------------------------------------
def test_broken_files_are_skipped_before_training_with_one_warning_each(tmp_path, caplog):
    classes(tmp_path, 6)
    broken = {zero_bytes(tmp_path / "cat" / "empty.jpg"): "empty file (0 bytes)",
              truncated_jpeg(tmp_path / "dog" / "cut.jpg"): "truncated",
              text_named_jpg(tmp_path / "cat" / "notes.jpg"): "not an image"}
    dm = FolderDataModule(data_dir=tmp_path, image_size=16)
    with caplog.at_level(logging.WARNING, logger="waldo.data"):
        dm.setup("fit")
    assert sorted(dm.skipped_images) == sorted(str(p) for p in broken)
    lines = warning_lines(caplog)
    assert len(lines) == len(broken) + 1, lines  # one per file, then the summary
    for path, reason in broken.items():
        [line] = [m for m in lines if str(path) in m]
        assert reason in line, line
    assert "skipped 3 of 15 images" in lines[-1] and str(tmp_path) in lines[-1]
    items = every_item(dm)  # nothing unreadable is left for the loaders to trip on
    assert len(items) == 12 and all(image.shape == (3, 16, 16) for image, _ in items)


def test_a_broken_file_in_test_is_found_at_setup_not_after_training(tmp_path, caplog):
    classes(tmp_path / "train", 4)
    classes(tmp_path / "val", 2)
    classes(tmp_path / "test", 2)
    bad = truncated_jpeg(tmp_path / "test" / "dog" / "late.jpg")
    dm = FolderDataModule(data_dir=tmp_path, image_size=16)
    with caplog.at_level(logging.WARNING, logger="waldo.data"):
        dm.setup("fit")
    assert dm.skipped_images == [str(bad)]
    assert any(str(bad) in m for m in warning_lines(caplog))
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [8, 4, 4]
    for image, _ in (dm.test_set[i] for i in range(len(dm.test_set))):
        assert image.shape == (3, 16, 16)


def test_a_mostly_unreadable_class_stops_with_one_line(tmp_path, caplog):
    classes(tmp_path / "train", 4)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        zero_bytes(tmp_path / "train" / "dog" / f"bad-{name}")
    # dog: 3 unreadable of 7, fine; in val/, 2 of 3 are unreadable
    classes(tmp_path / "val", 1)
    truncated_jpeg(tmp_path / "val" / "dog" / "x.jpg")
    text_named_jpg(tmp_path / "val" / "dog" / "y.jpg")
    dm = FolderDataModule(data_dir=tmp_path, image_size=16)
    with caplog.at_level(logging.WARNING, logger="waldo.data"), pytest.raises(WaldoError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "\n" not in message
    assert "class 'dog' (2 of 3)" in message and str(tmp_path / "val") in message
    assert "cat" not in message
    assert sum("bad-" in m for m in warning_lines(caplog)) == 3  # train/ was checked first


def test_exactly_half_of_a_class_unreadable_is_skipped_not_refused(tmp_path):
    classes(tmp_path, 4)
    for i in range(4):
        zero_bytes(tmp_path / "dog" / f"bad{i}.png")
    dm = FolderDataModule(data_dir=tmp_path, image_size=16)
    dm.setup("fit")
    assert len(dm.skipped_images) == 4 and len(every_item(dm)) == 8


def test_too_few_readable_images_left_is_one_clear_line(tmp_path):
    solid(tmp_path / "cat" / "0.png", RED)
    zero_bytes(tmp_path / "cat" / "1.png")
    solid(tmp_path / "dog" / "0.png", BLUE)
    with pytest.raises(WaldoError, match=r"too few images \(1 left after skipping 1 unreadable"):
        FolderDataModule(data_dir=tmp_path, image_size=16).setup("fit")


# --- image folders: odd modes -----------------------------------------------------------------
def odd_mode_images(folder: Path) -> dict[str, tuple[int, int, int]]:
    """One 16x16 file per mode that ImageFolder's `.convert("RGB")` gets wrong or warns about
    (name -> the RGB expected), under one class folder."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)
    expected["cmyk.jpg"] = (255, 0, 0)
    # 16-bit greyscale 40000 of 65535 is 61%, 156 of 255; convert("RGB") clips it to 255
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(folder / "grey16.png")
    expected["grey16.png"] = (156, 156, 156)
    Image.fromarray(np.full((16, 16), 40000, dtype=np.int32)).save(folder / "grey32.tif")
    expected["grey32.tif"] = (156, 156, 156)
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(folder / "palette.png")
    expected["palette.png"] = (10, 200, 30)
    # a palette with a transparency byte per entry (a tRNS chunk), the case Pillow warns about
    palette.save(folder / "palette-alpha.png", transparency=bytes([255, 128]))
    expected["palette-alpha.png"] = (10, 200, 30)  # alpha dropped, the colour kept
    Image.new("RGBA", (16, 16), (40, 50, 60, 0)).save(folder / "rgba.png")
    expected["rgba.png"] = (40, 50, 60)  # fully transparent: the colour under it stays
    Image.new("LA", (16, 16), (90, 128)).save(folder / "la.png")
    expected["la.png"] = (90, 90, 90)
    return expected


def test_odd_modes_come_out_as_sensible_rgb(tmp_path):
    expected = odd_mode_images(tmp_path / "odd")
    dm = FolderDataModule(data_dir=tmp_path, image_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's palette-transparency warning included
        ds = dm._image_folder(tmp_path)  # the ImageFolder as `load()` builds it
        for (path, _), (image, _) in zip(ds.samples, ds):
            assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
            colour = image[:, 8, 8].tolist()
            assert colour == pytest.approx(expected[Path(path).name], abs=3), path
    assert len(ds) == len(expected) and dm.skipped_images == []


def test_odd_modes_train_and_test_alongside_plain_images(tmp_path, caplog):
    odd_mode_images(tmp_path / "odd")
    classes(tmp_path, 4)
    dm = FolderDataModule(data_dir=tmp_path, image_size=16)
    with caplog.at_level(logging.WARNING, logger="waldo.data"), warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.setup("fit")
        items = every_item(dm)
    assert dm.labels == ["cat", "dog", "odd"] and len(items) == 15
    assert dm.skipped_images == [] and warning_lines(caplog) == []


# --- localization-folder: rows ----------------------------------------------------------------
SIZE = (32, 24)  # every image of these tests: 32 wide, 24 high


def write_csv(root: Path, rows: list[str], images: int = 6) -> Path:
    """`images` good 32x24 PNGs (0.png...) and a labels.csv of four good rows and `rows`."""
    for i in range(images):
        solid(root / f"{i}.png", RED, SIZE)
    good = ["0.png,2,2,10,8,cat", "1.png,4,4,12,10,dog", "2.png,,,,,", "3.png,0,0,32,24,cat"]
    (root / "labels.csv").write_text("\n".join(["image,x,y,w,h,label", *good, *rows]) + "\n")
    return root


def localization(root: Path) -> LocalizationFolderDataModule:
    return LocalizationFolderDataModule(data_dir=root, image_size=16, augment="none")


BAD_ROWS = {  # case -> (row, written on line 6, what the message must say)
    "x-negative": ("4.png,-3,0,10,10,cat", ["box x=-3, y=0, w=10, h=10", "32x24", "x >= 0"]),
    "right-edge-out": ("4.png,25,0,9,10,cat", ["x + w <= 32"]),
    "bottom-edge-out": ("4.png,0,20,5,6,cat", ["y + h <= 24"]),
    "negative-width": ("4.png,1,1,-5,4,cat", ["w=-5", "above 0"]),
    "zero-height": ("4.png,1,1,5,0,cat", ["h=0", "above 0"]),
    "nan": ("4.png,nan,1,5,5,cat", ["x=nan", "finite"]),
    "inf": ("4.png,1,1,inf,5,cat", ["w=inf", "finite"]),
    "huge-is-inf": ("4.png,1,1,1e400,5,cat", ["w=1e400", "finite"]),
    "empty-label": ("4.png,1,1,5,5,", ["empty label", "class name"]),
    "absolute-path": ("{root}/4.png,1,1,5,5,cat", ["absolute path", "relative to --data-dir"]),
    "dot-dot": ("../outside/x.png,1,1,5,5,cat", ["'../outside/x.png'", "outside --data-dir"]),
    "symlink-out": ("link.png,1,1,5,5,cat", ["'link.png'", "outside --data-dir"]),
    "too-few-columns": ("4.png,1,1,5,cat", ["5 columns, expected 6"]),
    "too-many-columns": ("4.png,1,1,5,5,cat,extra", ["7 columns, expected 6"]),
    "not-a-number": ("4.png,1,one,5,5,cat", ["not four numbers", "accepted: x,y,w,h in pixels"]),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_is_one_line_naming_file_line_and_what_is_accepted(tmp_path, case):
    root = tmp_path / "data"
    row, expected = BAD_ROWS[case]
    solid(tmp_path / "outside" / "x.png", RED, SIZE)  # real files outside --data-dir
    write_csv(root, [row.format(root=root)])
    os.symlink(tmp_path / "outside" / "x.png", root / "link.png")
    with pytest.raises(WaldoError) as info:
        localization(root).setup("fit")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{root / 'labels.csv'} line 6: "), message
    for text in expected:
        assert text in message, message


def test_several_bad_rows_are_named_in_one_line_first_five_then_a_count(tmp_path):
    write_csv(tmp_path, [f"4.png,1,1,-{n},5,cat" for n in range(1, 8)])
    with pytest.raises(WaldoError) as info:
        localization(tmp_path).setup("fit")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'labels.csv'}: 7 bad rows: ")
    assert [f"line {n}:" in message for n in range(6, 13)] == [True] * 5 + [False] * 2
    assert message.endswith("; and 2 more")


def test_a_box_may_overhang_by_one_pixel_and_is_clipped(tmp_path):
    write_csv(tmp_path, ["4.png,-1,-0.5,33,25,dog", "5.png,31,23,2,2,cat"])
    dm = localization(tmp_path)
    dm.setup("fit")
    rows = dm._read_rows(tmp_path)
    assert rows[-2][1] == [0.0, 0.0, 32.0, 24.0] and rows[-1][1] == [31.0, 23.0, 1.0, 1.0]
    for _, target in every_item(dm):
        assert torch.all((target[1:3] >= 0) & (target[1:3] + target[3:5] <= 1 + 1e-6))


def test_unreadable_images_in_the_csv_are_skipped_not_refused(tmp_path, caplog):
    zero_bytes(tmp_path / "broken.png")
    truncated_jpeg(tmp_path / "cut.jpg")
    write_csv(tmp_path, ["broken.png,1,1,5,5,cat", "cut.jpg,1,1,5,5,dog", "4.png,1,1,5,5,dog"])
    dm = localization(tmp_path)
    with caplog.at_level(logging.WARNING, logger="waldo.data"):
        dm.setup("fit")
    assert sorted(dm.skipped_images) == [str(tmp_path / "broken.png"), str(tmp_path / "cut.jpg")]
    lines = warning_lines(caplog)
    assert len(lines) == 3 and "skipped 2 of 7 images" in lines[-1]
    assert len(every_item(dm)) == 5


def test_a_class_of_mostly_unreadable_csv_images_stops_with_one_line(tmp_path):
    for name in ("b1.png", "b2.png"):
        zero_bytes(tmp_path / name)
    write_csv(tmp_path, ["b1.png,1,1,5,5,dog", "b2.png,1,1,5,5,dog"])
    with pytest.raises(WaldoError, match=r"for class 'dog' \(2 of 3\) in .*labels\.csv"):
        localization(tmp_path).setup("fit")


def test_a_csv_that_is_not_text_is_one_line(tmp_path):
    write_csv(tmp_path, [])
    (tmp_path / "labels.csv").write_bytes(b"image,x,y,w,h,label\n\xff\xfe\x00garbage\n")
    with pytest.raises(WaldoError, match="not UTF-8 text"):
        localization(tmp_path).setup("fit")



@pytest.mark.parametrize("csv_file", ["../labels.csv", "/etc/passwd", "sub/labels.csv", ".."])
def test_the_labels_file_is_a_name_inside_the_data_dir(tmp_path: Path, csv_file: str) -> None:
    with pytest.raises(WaldoError, match="must be a file name inside --data-dir"):
        LocalizationFolderDataModule(csv_file=csv_file, data_dir=str(tmp_path))
