"""User mistakes on the real `waldo` command: exit status 2, one line on stderr, no traceback.

Each case is a real subprocess. They are started all at once (module fixture) because each
pays the interpreter + torch start-up, and they run in parallel.
"""

from __future__ import annotations

import pytest

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
}


@pytest.fixture(scope="module")
def results(tmp_path_factory, waldo):
    cwd = tmp_path_factory.mktemp("cli")
    (cwd / "bad.yaml").write_text("epoch: 3\n")
    out = waldo.run_all({case: argv for case, (argv, _) in CASES.items()}, cwd=cwd)
    out["__cwd__"] = cwd
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_and_exit_2(results, case):
    returncode, stdout, stderr = results[case]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert returncode == 2, stderr
    assert "error" in lines[0]
    for expected in CASES[case][1]:
        assert expected in lines[0], f"{expected!r} not named in: {lines[0]}"


def test_user_errors_leave_no_run_behind(results):
    """A rejected spec never opens an MLflow run or a checkpoint folder."""
    cwd = results["__cwd__"]
    assert not (cwd / "waldo_runs").exists()
    assert not (cwd / "mlflow.db").exists()
