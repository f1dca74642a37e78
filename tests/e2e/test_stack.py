"""The docker-compose topology as processes on 127.0.0.1: an S3 server (moto_server, where
compose runs MinIO), an mlflow server whose artifacts live in its bucket, a Ray head plus one
worker node (token auth) checkpointing into the bucket, the jobs API and the inference service
watching `cnn@production`.

Through the jobs API a train job runs on Ray and shows up in MLflow, an export job registers
version 1 under the alias, the service picks it up by itself and classifies a held-out digit,
and a predict job scores digits in the bucket with the alias into Parquet there, as the service
answers them.
A submission without credentials is refused. Then headless Chromium opens the run in the MLflow
UI and finds its metrics.
"""

from __future__ import annotations

import io
import secrets
import sys
import time
from contextlib import ExitStack

import httpx
import pytest
from support import BIN, clean_env, ray_cluster, start_server, wait_http, wait_until
from support.browser import chromium, skip_without_chromium

pytestmark = [pytest.mark.ray, pytest.mark.servers, pytest.mark.trains]

MODEL = "cnn-e2e"


BUCKET = "waldo-stack"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_endpoint):
    import boto3

    root = tmp_path_factory.mktemp("stack")
    jobs_token = secrets.token_hex(24)
    # As compose configures every service for MinIO: the endpoint and the keys.
    s3_env = {"AWS_ENDPOINT_URL": s3_endpoint, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
              "AWS_ACCESS_KEY_ID": "waldo-stack", "AWS_SECRET_ACCESS_KEY": "waldo-stack",
              "AWS_DEFAULT_REGION": "us-east-1"}
    bucket = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="waldo-stack",
                          aws_secret_access_key="waldo-stack", region_name="us-east-1")
    bucket.create_bucket(Bucket=BUCKET)
    mlflow = start_server(
        lambda port: [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                      "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                      "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--workers", "1"],
        workdir=root / "mlflow", ready="/health",
        env=clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **s3_env))
    with (ray_cluster(root, workers=1, num_cpus=1, dashboard=True, env=s3_env) as ray,
          ExitStack() as servers):
        servers.callback(mlflow.stop)
        # The jobs API and the service get the nodes' environment: their Ray token, and this
        # interpreter first on PATH, so that `python` in a job's entrypoint is this one.
        jobs = start_server(
            lambda port: [sys.executable, "-m", "services.jobs", "--host", "127.0.0.1", "--port", str(port)],
            workdir=root / "jobs", timeout=180,
            env={**ray.env, "WALDO_JOBS_TOKEN": jobs_token, "WALDO_JOBS_RAY_ADDRESS": ray.dashboard,
                 "WALDO_JOBS_TRACKING_URI": mlflow.url, "WALDO_JOBS_STORAGE": f"s3://{BUCKET}/ray",
                 "WALDO_JOBS_STORAGE_ROOTS": f"s3://{BUCKET}", "WALDO_JOBS_DATA_ROOTS": f"s3://{BUCKET}"})
        servers.callback(jobs.stop)
        # The service reaches the registry's files through MLflow (proxied artifacts): no S3
        # credentials of its own, as in compose.
        serving_env = {k: v for k, v in ray.env.items() if not k.startswith(("AWS_", "MLFLOW_S3"))}
        serving = start_server(  # alive at once; ready once the alias exists (step 4)
            lambda port: [str(BIN / "waldo"), "serve", "--models", f"{MODEL}@production", "--host",
                          "127.0.0.1", "--port", str(port), "--tracking-uri", mlflow.url,
                          "--poll-interval-s", "2"],
            workdir=root / "serving", ready="/healthz", timeout=180,
            env={**serving_env, "WALDO_CACHE_DIR": str(root / "model-cache")})
        servers.callback(serving.stop)
        yield {"jobs": jobs.url, "token": jobs_token, "serving": serving.url, "mlflow": mlflow.url,
               "root": root, "ray": ray.dashboard, "servers": {"jobs": jobs, "serving": serving},
               "bucket": bucket}


def wait_job(client: httpx.Client, job_id: str, seconds: float = 600) -> dict:
    """The job once it has ended, whichever way (its last state if it has not)."""
    deadline = time.monotonic() + seconds
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(2)


def digit_png() -> tuple[bytes, str]:
    from PIL import Image

    from training.data.digits import DigitsDataModule

    dm = DigitsDataModule()
    dm.setup("test")
    x, y = dm.test_set[3]
    buf = io.BytesIO()
    Image.fromarray(x[0].numpy()).save(buf, "PNG")
    return buf.getvalue(), str(int(y))


def test_train_register_and_serve_through_the_jobs_api(stack):
    anonymous = httpx.post(f"{stack['jobs']}/v1/jobs", json={"kind": "train", "spec": {"model": "cnn"}})
    assert anonymous.status_code == 401
    wrong = httpx.post(f"{stack['jobs']}/v1/jobs", json={"kind": "train", "spec": {"model": "cnn"}},
                       headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403

    client = httpx.Client(base_url=stack["jobs"], headers={"Authorization": f"Bearer {stack['token']}"},
                          timeout=60)
    bad = client.post("/v1/jobs", json={"kind": "train", "spec": {"model": "cnn", "epochs": "many"}})
    assert bad.status_code == 422 and "'epochs'" in bad.json()["error"]["message"]

    # 1. A train job runs on Ray.
    submitted = client.post("/v1/jobs", json={"kind": "train", "spec": {
        "model": "cnn", "data": "digits", "epochs": 6, "experiment": "e2e"}})
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    assert job_id.startswith("waldo-train-") and submitted.json()["submission_id"] == job_id
    train = wait_job(client, job_id)
    assert train["status"] == "SUCCEEDED", client.get(f"/v1/jobs/{job_id}/logs").text[-3000:]
    assert train["duration_s"] > 0 and train["ended_at"]
    assert job_id in [j["id"] for j in client.get("/v1/jobs").json()["jobs"]]
    assert "WALDO_RESULT" in client.get(f"/v1/jobs/{job_id}/logs", params={"tail": 5}).text

    # 2. MLflow shows its run.
    from mlflow.tracking import MlflowClient

    run_id = train["mlflow_run_id"]
    run = MlflowClient(stack["mlflow"]).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["test_acc"] > 0.9
    # Its checkpoints went to the bucket, and the run says which one is best.
    keys = [o["Key"] for o in stack["bucket"].list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert run.data.tags["waldo.best_checkpoint"].startswith(f"s3://{BUCKET}/ray/")
    assert any(k.startswith("ray/") and k.endswith(".ckpt") for k in keys), keys
    assert train["mlflow_run_url"].startswith(stack["mlflow"]) and run_id in train["mlflow_run_url"]

    # 3. An export job registers version 1 under `production`.
    export = client.post("/v1/jobs", json={"kind": "export", "spec": {
        "run": run_id, "name": MODEL, "alias": "production"}})
    assert export.status_code == 201, export.text
    exported = wait_job(client, export.json()["id"])
    assert exported["status"] == "SUCCEEDED", client.get(f"/v1/jobs/{exported['id']}/logs").text[-3000:]
    assert exported["model"] == {"model_name": MODEL, "model_version": "1",
                                 "model_uri": f"models:/{MODEL}/1", "alias": "production"}
    assert MlflowClient(stack["mlflow"]).get_model_version_by_alias(MODEL, "production").version == "1"
    # The registered files are in the bucket, behind MLflow's artifact proxy.
    keys = [o["Key"] for o in stack["bucket"].list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")["Contents"]]
    assert {"model.onnx", "modelcard.json"} <= {k.rsplit("/", 1)[-1] for k in keys}, keys

    # 4. The inference service, watching the alias, serves it.
    serving = stack["servers"]["serving"]
    wait_http(f"{serving.url}/readyz", timeout=120, proc=serving.proc, log=serving.log)

    # 5. It classifies a held-out digit.
    image, label = digit_png()
    answer = httpx.post(f"{stack['serving']}/v1/models/{MODEL}/predict",
                        files=[("file", ("digit.png", image, "image/png"))]).json()
    assert answer["version"] == "1" and answer["predictions"][0]["label"] == label

    # 6. A predict job scores the digit (and a broken object) in the bucket into Parquet there.
    stack["bucket"].put_object(Bucket=BUCKET, Key="uploads/digit.png", Body=image)
    stack["bucket"].put_object(Bucket=BUCKET, Key="uploads/broken.png", Body=b"not a png")
    scoring = client.post("/v1/jobs", json={"kind": "predict", "spec": {
        "model": f"models:/{MODEL}@production", "sources": [f"s3://{BUCKET}/uploads"],
        "output": f"s3://{BUCKET}/scores"}})
    assert scoring.status_code == 201, scoring.text
    scored = wait_job(client, scoring.json()["id"])
    assert scored["status"] == "SUCCEEDED", client.get(f"/v1/jobs/{scored['id']}/logs").text[-3000:]
    assert (scored["result"]["scored"], scored["result"]["errors"]) == (1, 1)
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = [o["Key"] for o in stack["bucket"].list_objects_v2(Bucket=BUCKET, Prefix="scores/")["Contents"]]
    (part,) = [k for k in keys if k.rsplit("/", 1)[-1].startswith("part-")]
    body = stack["bucket"].get_object(Bucket=BUCKET, Key=part)["Body"].read()
    (row,) = pq.read_table(pa.BufferReader(body)).to_pylist()
    assert row["path"] == f"s3://{BUCKET}/uploads/digit.png" and row["model_version"] == "1"
    assert row["label"] == answer["predictions"][0]["label"]
    assert abs(row["probability"] - answer["predictions"][0]["probability"]) < 1e-6
    assert "scores/_errors.csv" in keys and "scores/_manifest.json" in keys

    stack["run"] = (run.info.experiment_id, run_id)


@pytest.mark.browser
def test_mlflow_ui_shows_the_run_and_its_metrics(stack, tmp_path):
    skip_without_chromium()
    if "run" not in stack:
        pytest.skip("the end-to-end run did not complete")
    from selenium.webdriver.support.ui import WebDriverWait

    experiment_id, run_id = stack["run"]
    with chromium(tmp_path, window="1400,1000") as driver:
        driver.get(f"{stack['mlflow']}/#/experiments/{experiment_id}/runs/{run_id}")
        WebDriverWait(driver, 90).until(lambda d: "test_acc" in d.find_element("tag name", "body").text)
        text = driver.find_element("tag name", "body").text
        assert "val_loss" in text and "test_acc" in text


def test_waldo_jobs_cli_submits_lists_and_stops(stack, waldo, tmp_path):
    env_token = ["--url", stack["jobs"], "--token", stack["token"]]

    def jobs(*args: str):
        return waldo.run("jobs", *env_token, *args, cwd=tmp_path, timeout=120)

    submitted = jobs("submit", "train", "--model", "cnn", "--epochs", "200", "--experiment", "e2e-cli")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]
    assert job_id.startswith("waldo-train-")
    assert job_id in jobs("list").stdout
    stopped = jobs("stop", job_id)
    assert stopped.returncode == 0 and job_id in stopped.stdout, stopped.stderr
    wait_until(lambda: '"status": "STOPPED"' in jobs("status", job_id).stdout,
               what=f"job {job_id} stopped", timeout=120, interval=2)
    assert "not running" in jobs("stop", job_id).stdout
    unknown = jobs("status", "waldo-train-nope")
    assert unknown.returncode == 2 and "404" in unknown.stderr and "waldo-train-nope" in unknown.stderr
    bad = jobs("submit", "train", "--epochs", "0")
    assert bad.returncode == 2 and "epochs" in bad.stderr and "Traceback" not in bad.stderr
