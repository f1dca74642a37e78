"""User mistakes on the real `waldo` console script: what tests/unit/test_cli_errors.py checks
in-process, here for the installed command, where import-time warnings or logging would also
reach stderr. One case per layer that can refuse: argparse, the spec, the model registry, the
data. Started all at once: each pays the interpreter and torch start-up."""

from __future__ import annotations

import pytest

# case id -> (argv, strings the message must contain)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "unknown-flag": (["train", "--epochz", "3"], ["--epochz"]),
    "negative-epochs": (["train", "--epochs", "-3"], ["'epochs'", "-3"]),
    "unknown-model": (["train", "--model", "nope", "--no-progress-bar"], ["'nope'", "cnn"]),
    "folder-missing-dir": (["train", "--data", "folder", "--data-dir", "/nonexistent"],
                           ["/nonexistent"]),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory, waldo):
    cwd = tmp_path_factory.mktemp("cli")
    return cwd, waldo.run_all({case: argv for case, (argv, _) in CASES.items()}, cwd=cwd)


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_and_exit_2(results, case):
    returncode, stdout, stderr = results[1][case]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert returncode == 2, stderr
    assert "error:" in lines[0]
    for expected in CASES[case][1]:
        assert expected in lines[0], f"{expected!r} not named in: {lines[0]}"


def test_user_errors_leave_no_run_behind(results):
    """A rejected spec never opens an MLflow run or a checkpoint folder."""
    cwd = results[0]
    assert not (cwd / "waldo_runs").exists()
    assert not (cwd / "mlflow.db").exists()
