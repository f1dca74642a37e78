"""Partly broken user data on the real `waldo train` (issue 12): unreadable images are skipped
with a warning line each and counted on the MLflow run, and data that cannot be trained on (a
class mostly unreadable, a bad labels.csv row) stops before training with one line and exit 2,
never a traceback. The cases of tests/unit/test_data_hardening.py, here for the installed
command, where logging has to reach stderr on its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.images import classes, solid, truncated_jpeg

pytestmark = pytest.mark.slow

TRAIN = ["train", "--model", "cnn", "--epochs", "1", "--image-size", "28", "--batch-size", "8",
         "--no-progress-bar"]


def broken_folder(root: Path) -> list[Path]:
    """train/ and test/ of two classes, with four unreadable files among them (one in test/,
    which used to be hit only after every epoch had trained)."""
    classes(root / "train", 6)
    classes(root / "test", 2)
    empty = root / "train" / "cat" / "empty.jpg"
    empty.write_bytes(b"")
    text = root / "train" / "dog" / "notes.jpg"
    text.write_text("not a picture\n")
    return [empty, text, truncated_jpeg(root / "train" / "dog" / "cut.jpg"),
            truncated_jpeg(root / "test" / "cat" / "late.jpg")]


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


# case -> (how to write D, what the one error line must say)
CASES = {
    "class-mostly-unreadable": (mostly_unreadable_class, ["class 'dog' (5 of 9)", "more than half"]),
    "csv-nan-box": (lambda d: localization_folder(d, "4.png,nan,1,5,5,cat"),
                    ["labels.csv line 6:", "x=nan", "finite"]),
    "csv-path-outside": (lambda d: localization_folder(d, "../outside.png,1,1,5,5,cat"),
                         ["labels.csv line 6:", "'../outside.png'", "outside --data-dir"]),
    "csv-malformed-row": (lambda d: localization_folder(d, "4.png,1,1,5"),
                          ["labels.csv line 6:", "4 columns, expected 6"]),
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
