"""`training.running.jobrunner.main()`, the fixed entrypoint of every Ray job (`python -m
training.running.jobrunner`), refusing bad jobs the way the CLI refuses bad flags: exit status 2 and
one line that names the problem, no traceback, and no result line. Called in this process,
with the job in a monkeypatched environment; nothing here trains or starts a process
(tests/integration/test_jobrunner_process.py runs a real job as Ray would)."""

from __future__ import annotations

import json
import os

import pytest

from training.running import jobrunner
from training.spec import JOB_ENV, JOB_RESULT_PREFIX


@pytest.fixture
def run_job(in_tmp, monkeypatch, capsys):
    """`run_job(job)`: `main()`'s (exit code, stdout, stderr) in an empty working folder, with
    the environment a job gets from `clean_env()` (no tracking URI, Ray address or other
    WALDO_* setting) plus the job when given. What main() sets in the environment is undone."""
    for name in [n for n in os.environ if n.startswith("WALDO_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # main() sets this default for the job's process; set here, so that it is undone after.
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    def run(job: str | None) -> tuple[int, str, str]:
        if job is not None:
            monkeypatch.setenv(JOB_ENV, job)
        capsys.readouterr()
        code = jobrunner.main()
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_refused(outcome: tuple[int, str, str], *words: str) -> None:
    code, out, err = outcome
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("waldo job: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert JOB_RESULT_PREFIX.strip() not in out


def test_no_job_in_the_environment(run_job):
    assert_refused(run_job(None), JOB_ENV)


@pytest.mark.parametrize("job", ["{not json", "", "[1, 2]", '"train"', "null"])
def test_a_job_that_is_not_a_json_object(run_job, job):
    assert_refused(run_job(job), JOB_ENV)


@pytest.mark.parametrize("job, missing", [({"spec": {}}, "kind"), ({"kind": "train"}, "spec")])
def test_a_job_without_kind_or_spec(run_job, job, missing):
    assert_refused(run_job(json.dumps(job)), missing)


def test_an_unknown_kind_names_the_kinds(run_job):
    assert_refused(run_job(json.dumps({"kind": "deploy", "spec": {}})),
                   "'deploy'", "train", "sweep", "export")


@pytest.mark.parametrize("kind, spec, words", [
    ("train", {"epochs": 0}, ["'epochs'", "greater than 0"]),
    ("train", {"modle": "cnn"}, ["'modle'", "did you mean 'model'"]),
    ("export", {"run": "abc", "opset": 7}, ["opset"]),
])
def test_an_invalid_spec_names_the_field(run_job, in_tmp, kind, spec, words):
    assert_refused(run_job(json.dumps({"kind": kind, "spec": spec})), *words)
    assert not any(in_tmp.iterdir()), "a refused job wrote files"


@pytest.mark.parametrize("spec", ["cnn", [1, 2], None])
def test_a_spec_that_is_not_an_object(run_job, spec):
    assert_refused(run_job(json.dumps({"kind": "train", "spec": spec})), "spec")

