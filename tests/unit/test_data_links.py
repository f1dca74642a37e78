"""Links and duplicates in the user's data (issue 24, item 2): a link to `.`, to `..` or out of
--data-dir is never walked, a file reached by two paths is read once, each skip is named in a
warning line; the splits are compared by content, and a run whose test split shares more than
1 in 100 images with train or val is refused unless the spec allows it. `waldo data pack` reads
folders the same way and stores the overlap in its manifest."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import datasets

from training.data.folder import FolderDataModule
from training.data.leakage import split_overlap
from training.data.links import SHOWN_SKIPS
from training.data.localization import LocalizationFolderDataModule
from training.data.packed import read_manifest
from training.errors import WaldoError
from training.running.steps import SPLIT_OVERLAP_TAG, check_split_overlap, split_overlap_tags
from training.spec import TrainSpec
from waldo.cli import main


def noise(path: Path, seed: int, size=(12, 12)) -> Path:
    """A PNG of random pixels: no two seeds give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def noise_classes(root: Path, per_class: int = 12, names=("cat", "dog"), seed: int = 0) -> Path:
    for c, name in enumerate(names):
        for i in range(per_class):
            noise(root / name / f"{i:02d}.png", seed + 1000 * c + i)
    return root


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "waldo.data" and r.levelno == logging.WARNING]


def loaded(root: Path, caplog) -> FolderDataModule:
    dm = FolderDataModule(data_dir=root, image_size=12)
    with caplog.at_level(logging.WARNING, logger="waldo.data"):
        dm.setup("fit")
    return dm


def rows(dm) -> list[tuple[str, int]]:
    _, splits = dm.records()
    return [row for split in splits.values() for row in split]


# --- links are never walked twice, nor out of --data-dir -----------------------------------------
@pytest.mark.parametrize("target, where", [(".", "cat"), ("..", "cat"), ("../..", "cat/deeper")])
def test_a_link_back_up_is_skipped_and_named(tmp_path, caplog, target, where):
    """torchvision's walk made 24 images into 10,824 rows through such a link, every image in
    train and test, some under the other class's label."""
    root = noise_classes(tmp_path / "D")
    (root / where).mkdir(exist_ok=True)
    os.symlink(target, root / where / "loop")
    dm = loaded(root, caplog)
    found = rows(dm)
    assert len(found) == 24 and len({path for path, _ in found}) == 24
    assert all(Path(path).parent.name == dm.labels[label] for path, label in found)
    assert [line for line in warnings_of(caplog) if "loop" in line] == [
        f"skipping link {str(root / where / 'loop')!r}: it leads to "
        f"{str((root / where / target).resolve())!r}, which the data set reads anyway"]
    assert dm.split_overlap.in_test == 0


def test_a_link_out_of_the_data_dir_is_skipped(tmp_path, caplog):
    root = noise_classes(tmp_path / "D")
    noise(tmp_path / "elsewhere" / "secret.png", 99)
    os.symlink(tmp_path / "elsewhere", root / "dog" / "more")
    os.symlink(tmp_path / "elsewhere", root / "elsewhere")  # a class folder that is a link out
    dm = loaded(root, caplog)
    assert dm.labels == ["cat", "dog"] and len(rows(dm)) == 24
    assert not any("secret" in path for path, _ in rows(dm))
    lines = warnings_of(caplog)
    assert len(lines) == 2 and all("leads outside --data-dir" in line for line in lines), lines


@pytest.mark.parametrize("link", [os.link, os.symlink])
def test_a_file_linked_into_two_classes_is_read_once(tmp_path, caplog, link):
    root = noise_classes(tmp_path / "D")
    link(root / "dog" / "03.png", root / "cat" / "zz.png")  # the link sorts into "cat", first
    dm = loaded(root, caplog)
    found = dict(rows(dm))
    assert len(found) == 24
    if link is os.symlink:  # the file's own path wins over a link's, whatever the order
        assert str(root / "dog" / "03.png") in found and str(root / "cat" / "zz.png") not in found
        assert warnings_of(caplog) == [f"skipping {str(root / 'cat' / 'zz.png')!r}: the same file "
                                       f"as {str(root / 'dog' / '03.png')!r}, read once"]
    else:  # two names of one file: the first in walk order
        assert found[str(root / "cat" / "zz.png")] == dm.labels.index("cat")
        assert warnings_of(caplog) == [f"skipping {str(root / 'dog' / '03.png')!r}: the same file "
                                       f"as {str(root / 'cat' / 'zz.png')!r}, read once"]


def test_a_link_inside_the_data_dir_to_a_folder_read_nowhere_else_is_followed_once(tmp_path, caplog):
    root = tmp_path / "D"
    for split, n in (("train", 8), ("val", 2), ("test", 2)):
        noise_classes(root / split, n, seed=100 * len(split))
    for i in range(3):
        noise(root / "extra" / "cats" / f"{i}.png", 500 + i)  # no split folder: read only by links
    os.symlink("../../extra/cats", root / "train" / "cat" / "more")
    os.symlink("../../extra/cats", root / "train" / "dog" / "again")
    dm = loaded(root, caplog)
    _, splits = dm.records()
    assert len(splits["train"]) == 16 + 3
    assert sum("/cat/more/" in path for path, _ in splits["train"]) == 3  # named by where it was found
    assert warnings_of(caplog) == [
        f"skipping link {str(root / 'train' / 'dog' / 'again')!r}: it leads to "
        f"{str(root / 'extra' / 'cats')!r}, which another link led to already"]


def test_a_split_folder_linked_onto_another_is_one_line(tmp_path):
    noise_classes(tmp_path / "D" / "train")
    os.symlink("train", tmp_path / "D" / "test")
    with pytest.raises(WaldoError, match="are the same folder"):
        FolderDataModule(data_dir=tmp_path / "D").setup("fit")


def test_many_duplicates_are_named_then_counted(tmp_path, caplog):
    root = noise_classes(tmp_path / "D")
    for i in range(12):
        os.link(root / "cat" / f"{i:02d}.png", root / "dog" / f"copy{i:02d}.png")
    loaded(root, caplog)
    lines = warnings_of(caplog)
    assert len(lines) == SHOWN_SKIPS + 1 and lines[-1].startswith("skipped 7 more links or duplicate")


def test_without_links_the_samples_are_torchvisions(tmp_path):
    """The overridden walk changes nothing for a plain folder: the same files, order, labels."""
    root = noise_classes(tmp_path / "D", per_class=5, names=("a", "b", "c"))
    noise(root / "b" / "sub" / "x.png", 7)
    noise(root / "b" / "sub" / "deeper" / "y.png", 8)
    noise(root / "b" / "0.png", 9)
    dm = FolderDataModule(data_dir=root)
    assert dm._image_folder(root).samples == datasets.ImageFolder(str(root)).samples


# --- waldo data pack reads folders the same way --------------------------------------------------
def test_data_pack_reads_each_file_once_and_stores_the_overlap(in_tmp, caplog):
    root = noise_classes(in_tmp / "photos")
    os.symlink(".", root / "cat" / "here")
    os.symlink("..", root / "dog" / "up")
    with caplog.at_level(logging.WARNING, logger="waldo.data"):
        assert main(["data", "pack", "photos", "packed"]) == 0
    manifest = read_manifest(str(in_tmp / "packed"), "classify")
    assert sum(split.count for split in manifest.splits.values()) == 24
    assert manifest.overlap is not None and manifest.overlap.in_test == 0
    assert sum("skipping link" in line for line in warnings_of(caplog)) == 2


# --- the leakage guard ---------------------------------------------------------------------------
def shared_classes(root: Path) -> Path:
    """Two classes that hold the same 12 images (copies, not links): a random split puts copies
    of test images in train."""
    noise_classes(root, names=("cat",))
    for path in sorted((root / "cat").iterdir()):
        (root / "dog").mkdir(exist_ok=True)
        (root / "dog" / path.name).write_bytes(path.read_bytes())
    return root


def test_classes_that_share_files_are_refused_unless_allowed(tmp_path, caplog):
    dm = loaded(shared_classes(tmp_path / "D"), caplog)
    overlap = dm.split_overlap
    assert overlap.in_test >= 1 and overlap.test == len(dm.test_set)
    with pytest.raises(WaldoError) as refused:
        check_split_overlap(TrainSpec(data="folder"), dm)
    message = str(refused.value)
    assert "\n" not in message and f"{overlap.in_test} of {overlap.test} test images" in message
    assert "--allow-split-overlap" in message and message.count(" = ") == min(2, overlap.in_test)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="waldo.data"):
        check_split_overlap(TrainSpec(data="folder", allow_split_overlap=True), dm)
    assert any("(allowed: allow_split_overlap)" in line for line in warnings_of(caplog))
    assert split_overlap_tags(dm) == {SPLIT_OVERLAP_TAG: str(overlap.in_test)}


def test_test_files_linked_back_up_into_train_are_refused(tmp_path, caplog):
    """A link to each file is read (a folder of links into a library is a data set), so a
    test/ of links back up into train/ is the same images twice: the guard finds them."""
    root = tmp_path / "D"
    noise_classes(root / "train")
    for name in ("cat", "dog"):
        (root / "test" / name).mkdir(parents=True)
        for i in range(3):
            os.symlink(f"../../train/{name}/{i:02d}.png", root / "test" / name / f"{i}.png")
    dm = loaded(root, caplog)
    assert (dm.split_overlap.test, dm.split_overlap.in_test) == (6, 6)
    with pytest.raises(WaldoError, match=r"6 of 6 test images \(100.0%\) also lie in train or val"):
        check_split_overlap(TrainSpec(data="folder"), dm)


def test_a_small_overlap_is_a_warning_and_none_is_silent(tmp_path, caplog):
    a, b = noise(tmp_path / "a.png", 1), noise(tmp_path / "b.png", 2)
    c = tmp_path / "c.png"
    c.write_bytes(a.read_bytes())
    many = [(f"t{i}", noise(tmp_path / f"t{i}.png", 10 + i)) for i in range(199)]
    overlap = split_overlap({"train": [("a", a)], "val": [("b", b)], "test": [("c", c), *many]})
    assert (overlap.in_test, overlap.test, overlap.examples) == (1, 200, [("c", "a")])
    assert overlap.share == 0.005  # within MAX_SHARE: trains, with a warning
    dm = FolderDataModule()
    dm.split_overlap = overlap
    with caplog.at_level(logging.WARNING, logger="waldo.data"):
        check_split_overlap(TrainSpec(data="folder"), dm)
    assert warnings_of(caplog) == [overlap.describe()]
    caplog.clear()
    dm.split_overlap = split_overlap({"train": [("a", a)], "val": [("b", b)], "test": many})
    check_split_overlap(TrainSpec(data="folder"), dm)
    assert warnings_of(caplog) == [] and split_overlap_tags(dm) == {SPLIT_OVERLAP_TAG: "0"}


def test_val_that_is_the_test_split_is_compared_with_train_alone(tmp_path):
    root = tmp_path / "D"
    noise_classes(root / "train", 6)
    noise_classes(root / "val", 2, seed=50)
    dm = FolderDataModule(data_dir=root, image_size=12)
    dm.setup("fit")
    assert dm.test_set is dm.val_set and dm.split_overlap.in_test == 0


# --- localization rows ---------------------------------------------------------------------------
def box_rows(root: Path, names: list[str]) -> None:
    for i in range(8):
        noise(root / f"{i}.png", 300 + i, size=(20, 20))
    (root / "labels.csv").write_text("image,x,y,w,h,label\n" + "".join(
        f"{name},1,1,5,5,k\n" for name in names))


@pytest.mark.parametrize("name, why", [
    ("../outside.png", "leads outside --data-dir"),
    ("sub/../../outside.png", "leads outside --data-dir"),
    ("out/outside.png", "leads outside --data-dir"),  # out/ is a link to the parent folder
    ("linked.png", "leads outside --data-dir"),  # a link to a file outside
])
def test_csv_paths_that_leave_the_data_dir_through_links_or_dots_are_refused(tmp_path, name, why):
    root = tmp_path / "D"
    root.mkdir()
    noise(tmp_path / "outside.png", 1, size=(20, 20))
    (root / "sub").mkdir()
    os.symlink(tmp_path, root / "out")
    os.symlink(tmp_path / "outside.png", root / "linked.png")
    box_rows(root, [f"{i}.png" for i in range(8)] + [name])
    dm = LocalizationFolderDataModule(data_dir=root)
    with pytest.raises(WaldoError, match=f"line 10: image {name!r} {why}"):
        dm.records()


def test_one_image_in_rows_of_two_splits_is_found(tmp_path):
    root = tmp_path / "D"
    root.mkdir()
    box_rows(root, [f"{i}.png" for i in range(8)] + ["0.png", "./0.png", "sub/../0.png"] * 4)
    (root / "sub").mkdir()
    dm = LocalizationFolderDataModule(data_dir=root)
    _, splits = dm.records()
    earlier = {Path(image).read_bytes() for split in ("train", "val") for image, _, _ in splits[split]}
    expected = sum(Path(image).read_bytes() in earlier for image, _, _ in splits["test"])
    assert expected >= 1  # the fixed split puts a spelling of 0.png in test and one before it
    assert (dm.split_overlap.in_test, dm.split_overlap.test) == (expected, len(splits["test"]))
