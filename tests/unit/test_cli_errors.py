"""User mistakes on the `waldo` command line: exit status 2, one line on stderr, no traceback,
and no run left behind. In-process through `waldo.cli.main`; the same contract for the real
console script is in tests/integration/test_cli_process.py."""

from __future__ import annotations

import pytest
from support import user_error_line, waldo_main

# case id -> (argv, strings the message must contain)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "unknown-model": (["train", "--model", "nope", "--no-progress-bar"],
                      ["'nope'", "cnn", "resnet18"]),
    "unknown-data": (["train", "--data", "nope", "--no-progress-bar"],
                     ["'nope'", "digits", "mnist"]),
    "folder-missing-dir": (["train", "--data", "folder", "--data-dir", "/nonexistent"],
                           ["/nonexistent"]),
    "mnist-missing-dir": (["train", "--data", "mnist", "--data-dir", "/nonexistent"],
                          ["/nonexistent"]),
    "malformed-input-shape": (["summary", "--model", "cnn", "--input-shape", "1,28"],
                              ["'1,28'", "C,H,W"]),
    "misspelled-spec-field": (["train", "--config", "bad.yaml"], ["'epoch'", "'epochs'"]),
    "negative-epochs": (["train", "--epochs", "-3"], ["'epochs'", "-3"]),
    "unknown-flag": (["train", "--epochz", "3"], ["--epochz"]),
    "missing-spec-file": (["train", "--config", "missing.yaml"], ["missing.yaml"]),
    "infinite-lr": (["train", "--lr", "inf", "--epochs", "1"], ["'lr'", "finite number"]),
    "boolean-epochs": (["train", "--config", "bool.yaml"], ["'epochs'", "not a boolean"]),
    "unknown-augment": (["train", "--augment", "heavy"], ["'augment'", "'heavy'", "trivialaugment"]),
    "policy-for-boxes": (["train", "--task", "localize", "--data", "localization-digits",
                          "--augment", "randaugment"], ["randaugment", "none or basic"]),
    "mixup-for-boxes": (["train", "--task", "localize", "--data", "localization-digits",
                         "--mixup-alpha", "0.2"], ["mixup_alpha=0.2", "classification"]),
    "warmup-too-long": (["train", "--epochs", "2", "--warmup-epochs", "2"],
                        ["warmup_epochs 2", "epochs=2"]),
    "ema-decay-of-1": (["train", "--ema-decay", "1"], ["'ema_decay'", "less than 1"]),
    "negative-mixup-alpha": (["train", "--mixup-alpha", "-0.2"], ["'mixup_alpha'", "-0.2"]),
    # Every number flag: the flag, the value, what it takes; never Python's int() error.
    "odd-digit-workers": (["train", "--workers", "1-²"], ["--workers", "'1-²'", "MIN-MAX"]),
    "odd-digit-epochs": (["train", "--epochs", "٣"], ["--epochs", "'٣'", "an integer"]),
    "word-epochs": (["train", "--epochs", "abc"], ["--epochs", "'abc'", "an integer"]),
    "float-image-size": (["train", "--image-size", "1.5"], ["--image-size", "'1.5'", "an integer"]),
    "malformed-lr": (["train", "--lr", "1e-3x"], ["--lr", "'1e-3x'", "a number"]),
    "pack-val-fraction": (["data", "pack", "src", "out", "--val-fraction", "5"],
                          ["--val-fraction", "'5'", "above 0 and below 1"]),
    "pack-shard-mb": (["data", "pack", "src", "out", "--shard-mb", "lots"], ["--shard-mb", "'lots'"]),
    "summary-num-classes": (["summary", "--model", "cnn", "--num-classes", "0"],
                            ["--num-classes", "'0'", "at least 1"]),
    "cluster-port": (["cluster", "up", "--port", "70000"], ["--port", "'70000'", "from 1 to 65535"]),
    # A file where a folder is needed says so.
    "data-dir-is-a-file": (["train", "--data", "folder", "--data-dir", "/etc/passwd"],
                           ["'/etc/passwd' is a file", "needs a folder"]),
    "packed-dir-is-a-file": (["train", "--data", "packed", "--data-dir", "/etc/passwd"],
                             ["'/etc/passwd' is a file", "waldo data pack"]),
    "storage-is-a-file": (["train", "--storage", "/etc/passwd"], ["--storage", "'/etc/passwd' is a file"]),
    "storage-under-a-file": (["train", "--storage", "/etc/passwd/runs"],
                             ["'/etc/passwd' is a file"]),
    "pack-source-is-a-file": (["data", "pack", "/etc/passwd", "out"], ["'/etc/passwd' is a file"]),
    "pack-destination-is-a-file": (["data", "pack", "src", "/etc/passwd"],
                                   ["destination '/etc/passwd' is a file"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_and_exit_2(in_tmp, capsys, case):
    (in_tmp / "bad.yaml").write_text("epoch: 3\n")
    (in_tmp / "bool.yaml").write_text("epochs: true\n")
    argv, expected = CASES[case]
    status, _, err = waldo_main(capsys, *argv)
    line = user_error_line(status, err)
    assert "error" in line
    for text in expected:
        assert text in line, f"{text!r} not named in: {line}"
    # A rejected spec never opens an MLflow run or a checkpoint folder.
    assert not (in_tmp / "waldo_runs").exists() and not (in_tmp / "mlflow.db").exists()
