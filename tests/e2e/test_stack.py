"""The docker-compose topology as processes on 127.0.0.1: an mlflow server, a Ray head plus one
worker node (token auth), the jobs API and the inference service watching `cnn@production`.

Through the jobs API a train job runs on Ray and shows up in MLflow, an export job registers
version 1 under the alias, the service picks it up by itself and classifies a held-out digit.
A submission without credentials is refused. Then headless Chromium opens the run in the MLflow
UI and finds its metrics.
"""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from servers import free_port, stop_group

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MODEL = "cnn-e2e"


def wait_http(url: str, proc: subprocess.Popen, log: Path, seconds: float = 180,
              status: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url, timeout=3).status_code in status:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, f"{proc.args[:3]} exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{url} not {status} after {seconds}s:\n{log.read_text()[-3000:]}"
        time.sleep(1)


def node_ports() -> list[str]:
    """Ports of a node's own agents. Two nodes on one machine (or another Ray running beside
    the test) would otherwise collide on the defaults, and the job agent would never start."""
    flags = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
             "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port"]
    return [f"{flag}={free_port()}" for flag in flags] + ["--disable-usage-stats"]


class Processes:
    """Processes started in their own sessions, so each can be ended with all it spawned."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.procs = root, env, []

    def start(self, name: str, *argv: str,
              env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        log = self.root / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(list(argv), cwd=self.root, env={**self.env, **(env or {})}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc, log

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_group(proc)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, mlflow_server):
    root = tmp_path_factory.mktemp("stack")
    ray_token, jobs_token = secrets.token_hex(32), secrets.token_hex(24)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    # `python` in the job entrypoint must be this interpreter: the nodes inherit this PATH.
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=ray_token, PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    procs = Processes(root, env)
    gcs, dashboard = free_port(), free_port()
    try:
        head, head_log = procs.start("ray-head", str(BIN / "ray"), "start", "--head", "--block",
                                     f"--port={gcs}", "--dashboard-host=127.0.0.1",
                                     f"--dashboard-port={dashboard}", "--num-cpus=1",
                                     "--include-dashboard=true", *node_ports())
        ray_api = f"http://127.0.0.1:{dashboard}"
        wait_http(f"{ray_api}/api/version", head, head_log, status=(200, 401, 403))  # token auth is on
        procs.start("ray-worker", str(BIN / "ray"), "start", "--block", f"--address=127.0.0.1:{gcs}",
                    "--num-cpus=1", *node_ports())
        jobs_port, serve_port = free_port(), free_port()
        jobs, jobs_log = procs.start(
            "jobs", sys.executable, "-m", "uvicorn", "services.jobs.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(jobs_port),
            env={"WALDO_JOBS_TOKEN": jobs_token, "WALDO_JOBS_RAY_ADDRESS": ray_api,
                 "WALDO_JOBS_TRACKING_URI": mlflow_server})
        serving, serving_log = procs.start(
            "serving", str(BIN / "waldo"), "serve", "--models", f"{MODEL}@production", "--port",
            str(serve_port), "--tracking-uri", mlflow_server, "--poll-interval-s", "2",
            env={"WALDO_CACHE_DIR": str(root / "model-cache")})
        jobs_url, serve_url = f"http://127.0.0.1:{jobs_port}", f"http://127.0.0.1:{serve_port}"
        wait_http(f"{jobs_url}/readyz", jobs, jobs_log)
        wait_http(f"{serve_url}/healthz", serving, serving_log)
        yield {"jobs": jobs_url, "token": jobs_token, "serving": serve_url, "mlflow": mlflow_server,
               "root": root, "ray": ray_api}
    finally:
        procs.stop()
        # `ray start --head` leaves its address for later `ray.init()` calls to join; `ray stop`
        # would remove it but also end every other Ray on the machine.
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp/ray")) / "ray_current_cluster"
        if current.is_file() and f":{gcs}" in current.read_text():
            current.unlink()


def wait_job(client: httpx.Client, job_id: str, seconds: float = 600) -> dict:
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

    # 4. The inference service, watching the alias, serves it.
    deadline = time.monotonic() + 120
    while httpx.get(f"{stack['serving']}/readyz").status_code != 200:
        assert time.monotonic() < deadline, httpx.get(f"{stack['serving']}/readyz").json()
        time.sleep(1)

    # 5. It classifies a held-out digit.
    image, label = digit_png()
    answer = httpx.post(f"{stack['serving']}/v1/models/{MODEL}/predict",
                        files=[("file", ("digit.png", image, "image/png"))]).json()
    assert answer["version"] == "1" and answer["predictions"][0]["label"] == label

    stack["run"] = (run.info.experiment_id, run_id)


def test_mlflow_ui_shows_the_run_and_its_metrics(stack, tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    if "run" not in stack:
        pytest.skip("the end-to-end run did not complete")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    experiment_id, run_id = stack["run"]
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(f"{stack['mlflow']}/#/experiments/{experiment_id}/runs/{run_id}")
        WebDriverWait(driver, 90).until(lambda d: "test_acc" in d.find_element("tag name", "body").text)
        text = driver.find_element("tag name", "body").text
        assert "val_loss" in text and "test_acc" in text
    finally:
        driver.quit()


def test_waldo_jobs_cli_submits_lists_and_stops(stack, waldo, tmp_path):
    env_token = ["--url", stack["jobs"], "--token", stack["token"]]

    def jobs(*args: str):
        return subprocess.run([*waldo.command(), "jobs", *env_token, *args], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)

    submitted = jobs("submit", "train", "--model", "cnn", "--epochs", "200", "--experiment", "e2e-cli")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]
    assert job_id.startswith("waldo-train-")
    assert job_id in jobs("list").stdout
    stopped = jobs("stop", job_id)
    assert stopped.returncode == 0 and job_id in stopped.stdout, stopped.stderr
    deadline = time.monotonic() + 120
    while '"status": "STOPPED"' not in jobs("status", job_id).stdout:
        assert time.monotonic() < deadline, jobs("status", job_id).stdout
        time.sleep(2)
    assert "not running" in jobs("stop", job_id).stdout
    unknown = jobs("status", "waldo-train-nope")
    assert unknown.returncode == 2 and "404" in unknown.stderr and "waldo-train-nope" in unknown.stderr
    bad = jobs("submit", "train", "--epochs", "0")
    assert bad.returncode == 2 and "epochs" in bad.stderr and "Traceback" not in bad.stderr
