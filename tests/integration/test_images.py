"""The container images as built for real: `scripts/stack.sh ci` (run by .ci/run) builds the
serving, jobs and mlflow images from infra/docker/ on podman; these tests run them.

The serving image serves the session's model repository (a folder of ONNX models and their
ModelCards, mounted read-only) on a published port, and is spoken to over HTTP from here, as a
user runs it. Every image runs as uid 1000, and serving and jobs hold no torch.

Where the images were not built (no podman, or a machine that cannot run containers, which
`scripts/stack.sh ci` reports), these tests skip and say so.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from support import start_server

pytestmark = pytest.mark.containers

PREFIX, TAG = "waldo", "0.1.0"
IMAGES = ("serving", "jobs", "mlflow")
# What each image must be able to import: its own application and nothing of the training stack.
APP = {"serving": "serving.app", "jobs": "services.jobs.app", "mlflow": "mlflow.server, psycopg2, boto3"}
NO_TORCH = {"serving", "jobs"}


def image(name: str) -> str:
    """`waldo/NAME:0.1.0`, or skip the test when podman or that image is missing."""
    ref = f"{PREFIX}/{name}:{TAG}"
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/stack.sh ci installs it; .ci/run runs that)")
    if subprocess.run(["podman", "image", "exists", ref], capture_output=True, timeout=60).returncode != 0:
        pytest.skip(f"{ref} is not built (scripts/stack.sh ci builds it; .ci/run runs that)")
    return ref


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", IMAGES)
def test_image_runs_as_a_user_with_its_app_and_without_torch(name: str) -> None:
    ref = image(name)
    assert podman("image", "inspect", "--format", "{{.Config.User}}", ref).stdout.strip() == "1000:1000"
    script = (f"import os, importlib.util, {APP[name]}\n"
              "print(os.getuid(), importlib.util.find_spec('torch') is not None)")
    result = podman("run", "--rm", "--network", "none", "--no-healthcheck", ref, "python", "-c", script)
    assert result.returncode == 0, result.stderr
    uid, has_torch = result.stdout.split()
    assert uid == "1000"
    if name in NO_TORCH:
        assert has_torch == "False"


def test_serving_image_serves_a_model_folder(model_repo, tmp_path: Path, digits) -> None:
    """`podman run -v MODELS:/models:ro -e WALDO_MODELS=/models -p 127.0.0.1:PORT:8000 waldo/serving`:
    it lists both models, classifies held-out digits, answers /metrics and the v2 protocol, turns
    a bad image into a JSON 400, and its own HEALTHCHECK passes."""
    ref = image("serving")
    repo, _ = model_repo
    models = tmp_path / "models"
    shutil.copytree(repo, models)  # readable by the image's uid 1000 (the session's folder is 0700)
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    name = f"waldo-test-serving-{int(time.time() * 1000) % 10**9}"

    def argv(port: int) -> list[str]:
        return ["podman", "run", "--rm", "--name", name, "--health-interval=disable",
                "-p", f"127.0.0.1:{port}:8000", "-v", f"{models}:/models:ro",
                "-e", "WALDO_MODELS=/models", ref]

    started = time.monotonic()
    server = start_server(argv, workdir=tmp_path / "server", timeout=180)
    ready_s = time.monotonic() - started
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            listed = client.get("/v1/models").json()["models"]
            assert sorted(m["name"] for m in listed) == ["cnn", "cnn-localize"]
            right = 0
            for label, png in digits[:10]:
                response = client.post("/v1/models/cnn/predict", files={"file": ("d.png", png, "image/png")})
                assert response.status_code == 200, response.text
                right += response.json()["predictions"][0]["label"] == str(label)
            assert right >= 8, f"{right} of 10 digits right"
            bad = client.post("/v1/models/cnn/predict",
                              files={"file": ("x.png", b"not an image", "image/png")})
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_image"
            assert client.get("/v2/health/ready").status_code == 200
            metrics = client.get("/metrics")
            assert metrics.status_code == 200 and "waldo_requests_total" in metrics.text
        # The image's own HEALTHCHECK (what compose waits for) passes against the running server.
        check = podman("healthcheck", "run", name)
        assert check.returncode == 0 and "unhealthy" not in check.stdout, check.stdout + check.stderr
    finally:
        podman("rm", "--force", "--time", "5", name)
        server.stop()
    print(f"serving image ready {ready_s:.1f} s after `podman run`")
