"""Partly broken user data on the real `waldo train` (issue 12): unreadable images are skipped
with a warning line each and counted on the MLflow run, and data that cannot be trained on (a
class mostly unreadable, a bad labels.csv row, a test split that repeats training images)
stops before training with one line and exit 2, never a traceback. The cases of
tests/unit/test_data_hardening.py and tests/unit/test_data_links.py, here for the installed
command, where logging has to reach stderr on its own."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from support.images import classes, solid, truncated_jpeg

TRAIN = ["train", "--model", "cnn", "--epochs", "1", "--image-size", "28", "--batch-size", "8",
         "--no-progress-bar"]


def distinct_classes(root: Path, n: int, start: int = 0) -> None:
    """`n` reddish cats and `n` bluish dogs, no two of the same bytes (the leakage guard would
    refuse test images equal to training ones)."""
    for i in range(start, start + n):
        solid(root / "cat" / f"{i:02d}.png", (220, 30 + i, 30))
        solid(root / "dog" / f"{i:02d}.png", (30, 30 + i, 220))


def broken_folder(root: Path) -> list[Path]:
    """train/ and test/ of two classes, with four unreadable files among them (one in test/,
    which used to be hit only after every epoch had trained)."""
    distinct_classes(root / "train", 6)
    distinct_classes(root / "test", 2, start=6)
    empty = root / "train" / "cat" / "empty.jpg"
    empty.write_bytes(b"")
    text = root / "train" / "dog" / "notes.jpg"
    text.write_text("not a picture\n")
    return [empty, text, truncated_jpeg(root / "train" / "dog" / "cut.jpg"),
            truncated_jpeg(root / "test" / "cat" / "late.jpg")]


@pytest.mark.trains
def test_unreadable_images_are_skipped_named_and_counted_on_the_run(tmp_path, waldo):
    from mlflow.tracking import MlflowClient

    broken = broken_folder(tmp_path / "D")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = waldo.run(*TRAIN, "--data", "folder", "--data-dir", "D", "--tracking-uri", uri,
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    for path in broken:
        named = [line for line in lines if str(path) in line]
        assert len(named) == 1 and named[0].startswith("skipping unreadable image"), proc.stderr
    run_id = re.search(r"run ([0-9a-f]{32})", proc.stdout).group(1)
    client = MlflowClient(uri)
    assert client.get_run(run_id).data.metrics["data_skipped_images"] == 4
    listed = Path(client.download_artifacts(run_id, "skipped_images.txt", str(tmp_path)))
    assert sorted(listed.read_text().split()) == sorted(str(p) for p in broken)


def localization_folder(root: Path, bad_row: str) -> list[str]:
    for i in range(5):
        solid(root / f"{i}.png", (220, 30, 30), (32, 24))
    solid(root.parent / "outside.png", (220, 30, 30), (32, 24))
    rows = ["image,x,y,w,h,label", "0.png,2,2,10,8,cat", "1.png,4,4,12,10,dog", "2.png,,,,,",
            "3.png,0,0,32,24,cat", bad_row]  # the bad row is line 6
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return ["--task", "localize", "--data", "localization-folder"]


def mostly_unreadable_class(root: Path) -> list[str]:
    classes(root, 4)
    for i in range(5):
        (root / "dog" / f"bad{i}.jpg").write_bytes(b"")
    return ["--data", "folder"]


def shared_classes(root: Path) -> list[str]:
    """Two classes holding copies of the same 12 images: the random split puts copies of test
    images in train (and labels them both ways)."""
    distinct_classes(root, 12)
    for path in (root / "cat").iterdir():
        (root / "dog" / path.name).write_bytes(path.read_bytes())
    return ["--data", "folder"]


def linked_back_up(root: Path) -> list[str]:
    """train/ and a test/ whose files are links back up into train/; a link to `.` besides,
    which is never walked."""
    distinct_classes(root / "train", 8)
    for name in ("cat", "dog"):
        (root / "test" / name).mkdir(parents=True)
        for i in range(2):
            os.symlink(f"../../train/{name}/{i:02d}.png", root / "test" / name / f"{i}.png")
    os.symlink(".", root / "train" / "cat" / "again")
    return ["--data", "folder"]


# case -> (how to write D, what the one error line must say)
CASES = {
    "class-mostly-unreadable": (mostly_unreadable_class, ["class 'dog' (5 of 9)", "more than half"]),
    "csv-nan-box": (lambda d: localization_folder(d, "4.png,nan,1,5,5,cat"),
                    ["labels.csv line 6:", "x=nan", "finite"]),
    "csv-path-outside": (lambda d: localization_folder(d, "../outside.png,1,1,5,5,cat"),
                         ["labels.csv line 6:", "'../outside.png'", "outside --data-dir"]),
    "csv-malformed-row": (lambda d: localization_folder(d, "4.png,1,1,5"),
                          ["labels.csv line 6:", "4 columns, expected 6"]),
    "classes-share-files": (shared_classes, ["test images", "also lie in train or val (the same bytes)",
                                             "--allow-split-overlap"]),
    "test-linked-back-up": (linked_back_up, ["4 of 4 test images (100.0%) also lie in train or val",
                                             "--allow-split-overlap"]),
}


@pytest.fixture(scope="module")
def refused(tmp_path_factory, waldo) -> dict[str, tuple[int, str, str]]:
    """Every case at once: each pays the interpreter and torch start-up."""
    cwd = tmp_path_factory.mktemp("refused")
    argv = {}
    for case, (write, _) in CASES.items():
        data = cwd / case / "D"
        data.mkdir(parents=True)
        argv[case] = [*TRAIN, *write(data), "--data-dir", str(data),
                      "--tracking-uri", f"sqlite:///{cwd / case / 'mlflow.db'}"]
    return waldo.run_all(argv, cwd=cwd)


@pytest.mark.slow  # six `waldo train` processes at once: half a minute on 2 cores
@pytest.mark.parametrize("case", list(CASES))
def test_data_that_cannot_train_stops_with_one_line_and_exit_2(refused, case):
    returncode, _, stderr = refused[case]
    assert "Traceback" not in stderr, stderr
    assert returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr
    assert errors[0].startswith("waldo train: error: ")
    for text in CASES[case][1]:
        assert text in errors[0], errors[0]
    if case.startswith("csv-"):  # nothing was skipped, so nothing but the error is printed
        assert stderr.strip() == errors[0], stderr


@pytest.mark.trains
def test_an_allowed_overlap_trains_and_is_recorded_on_the_run(tmp_path, waldo):
    from mlflow.tracking import MlflowClient

    linked_back_up(tmp_path / "D")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = waldo.run(*TRAIN, "--data", "folder", "--data-dir", "D", "--tracking-uri", uri,
                     "--allow-split-overlap", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    d = (tmp_path / "D").resolve()  # as the run names it
    assert [line for line in lines if "also lie in train" in line] == [
        f"4 of 4 test images (100.0%) also lie in train or val (the same bytes), e.g. "
        f"'{d}/test/cat/0.png' = '{d}/train/cat/00.png', '{d}/test/cat/1.png' = "
        f"'{d}/train/cat/01.png' (allowed: allow_split_overlap)"]
    assert sum(line.startswith(f"skipping link '{d}/train/cat/again'") for line in lines) == 1
    run = MlflowClient(uri).get_run(re.search(r"run ([0-9a-f]{32})", proc.stdout).group(1))
    assert run.data.tags["waldo.split_overlap"] == "4"
    assert run.data.params["allow_split_overlap"] == "True"
    assert run.data.tags["data.train_size"] == "14"  # 16 less the held-out val; `again` read nothing
