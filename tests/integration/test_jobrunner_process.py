"""Real jobs through `python -m training.jobrunner`, as Ray would start them: in a working folder
of their own, with no tracking server, so MLflow is the embedded ./mlflow.db. The result line of
a train job must describe the run and the registered, aliased model version that are there; a
predict job's, the scoring run and the Parquet it wrote."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import REPO_ROOT, clean_env

from training.spec import JOB_ENV, JOB_RESULT_PREFIX

JOB = {"kind": "train", "spec": {"model": "cnn", "data": "digits", "epochs": 1, "progress_bar": False,
                                 "export": True, "publish": True, "alias": "production"}}


def run_job(job: dict, folder) -> dict:
    """Run `job` as Ray would, in `folder`; it must succeed. Its result line, parsed."""
    env = clean_env(**{JOB_ENV: json.dumps(job)}, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-m", "training.running.jobrunner"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(JOB_RESULT_PREFIX), proc.stdout[-2000:]
    return json.loads(last[len(JOB_RESULT_PREFIX):])


@pytest.mark.trains
@pytest.mark.processes
def test_a_train_job_ends_with_a_result_line_that_mlflow_confirms(tmp_path):
    from mlflow.tracking import MlflowClient

    result = run_job(JOB, tmp_path)
    assert (tmp_path / "mlflow.db").is_file()

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result["run_id"])  # raises if the run is not in ./mlflow.db
    assert run.info.status == "FINISHED"
    name, version = result["model_name"], result["model_version"]
    assert result["model_uri"] == f"models:/{name}/{version}" and result["alias"] == "production"
    registered = client.get_model_version(name, version)
    assert registered.run_id == result["run_id"]
    assert str(client.get_model_version_by_alias(name, "production").version) == version


@pytest.mark.processes
def test_a_predict_job_writes_parquet_and_a_result_line_that_mlflow_confirms(tiny_repo, tmp_path):
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient
    from support.tiny import png_bytes, sample_images

    repo, _ = tiny_repo
    images = tmp_path / "images"
    images.mkdir()
    for i, pixels in enumerate(sample_images()):
        (images / f"{i}.png").write_bytes(png_bytes(pixels))
    (images / "broken.png").write_bytes(b"broken")
    job = {"kind": "predict", "spec": {"model": str(repo / "cnn" / "1"), "sources": [str(images)],
                                       "output": str(tmp_path / "scores")}}
    result = run_job(job, tmp_path)
    assert (result["model_name"], result["model_version"]) == ("cnn", "1")
    assert (result["images"], result["scored"], result["errors"]) == (13, 12, 1)
    table = pq.read_table(tmp_path / "scores")
    assert sorted(table.column("path").to_pylist()) == sorted(str(images / f"{i}.png") for i in range(12))
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["images_scored"] == 12
