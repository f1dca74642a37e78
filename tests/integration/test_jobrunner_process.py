"""One real train job through `python -m training.jobrunner`, as Ray would start it: in a
working folder of its own, with no tracking server, so MLflow is the embedded ./mlflow.db. The
result line must describe the run and the registered, aliased model version that are there."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import REPO_ROOT, clean_env

from training.spec import JOB_ENV, JOB_RESULT_PREFIX

JOB = {"kind": "train", "spec": {"model": "cnn", "data": "digits", "epochs": 1, "progress_bar": False,
                                 "export": True, "publish": True, "alias": "production"}}


@pytest.mark.trains
@pytest.mark.processes
def test_a_train_job_ends_with_a_result_line_that_mlflow_confirms(tmp_path):
    from mlflow.tracking import MlflowClient

    env = clean_env(**{JOB_ENV: json.dumps(JOB)}, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-m", "training.running.jobrunner"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(JOB_RESULT_PREFIX), proc.stdout[-2000:]
    result = json.loads(last[len(JOB_RESULT_PREFIX):])
    assert (tmp_path / "mlflow.db").is_file()

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result["run_id"])  # raises if the run is not in ./mlflow.db
    assert run.info.status == "FINISHED"
    name, version = result["model_name"], result["model_version"]
    assert result["model_uri"] == f"models:/{name}/{version}" and result["alias"] == "production"
    registered = client.get_model_version(name, version)
    assert registered.run_id == result["run_id"]
    assert str(client.get_model_version_by_alias(name, "production").version) == version
