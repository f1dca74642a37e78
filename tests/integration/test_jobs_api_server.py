"""The jobs API as operators start it, `python -m services.jobs`, a real uvicorn process on
127.0.0.1 with no Ray cluster behind it (Ray is dialled only when a job is submitted or listed),
spoken to over real sockets: a stranger's big body is refused before it is read, an oversized
body is 413, specs that name the tracking server or a path outside the roots are 422, and the
service answers normally afterwards. Settings that do not validate are one line and status 2.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import Server, clean_env, free_port, start_server

pytestmark = pytest.mark.servers

TOKEN = secrets.token_hex(24)
LIMIT = 64 * 2**10


@pytest.fixture(scope="module")
def jobs_api(tmp_path_factory) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("jobs-api")
    (root / "data").mkdir()
    env = clean_env(WALDO_JOBS_TOKEN=TOKEN, WALDO_JOBS_RAY_ADDRESS=f"http://127.0.0.1:{free_port()}",
                    WALDO_JOBS_DATA_ROOTS=str(root / "data"), WALDO_JOBS_MAX_BODY_BYTES=str(LIMIT))
    server = start_server(lambda port: [sys.executable, "-m", "services.jobs", "--host", "127.0.0.1",
                                        "--port", str(port), "--log-level", "warning"],
                          workdir=root / "server", ready="/healthz", env=env, timeout=60)
    try:
        yield server, root
    finally:
        server.stop()


def raw_post(url: str, headers: dict[str, str], timeout: float = 10) -> tuple[int, dict, float]:
    """POST /v1/jobs over a plain socket: the request line and headers, and none of the body its
    Content-Length declares (so a server that reads before it answers never answers); (status,
    JSON body, seconds to the answer)."""
    host, port = url.removeprefix("http://").split(":")
    lines = ["POST /v1/jobs HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall("\r\n".join(lines).encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload), time.monotonic() - started


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_strangers_big_body_is_refused_before_it_is_read(jobs_api):
    server, _ = jobs_api
    # 50 MB declared, none sent: the 401 comes without waiting for any of it.
    status, body, seconds = raw_post(server.url, {"Content-Length": str(50 * 2**20)})
    assert status == 401 and seconds < 5
    assert body == {"error": {"code": "unauthorized",
                              "message": "this endpoint needs an Authorization: Bearer <token> header"}}
    status, body, _ = raw_post(server.url, {"Content-Length": str(50 * 2**20),
                                            "Authorization": "Bearer not-the-token"})
    assert status == 403 and body["error"]["code"] == "forbidden"


def test_a_body_over_the_limit_is_413(jobs_api):
    server, _ = jobs_api
    status, body, _ = raw_post(server.url, {"Content-Length": str(LIMIT + 1),
                                            "Authorization": f"Bearer {TOKEN}"})
    assert status == 413
    assert body == {"error": {"code": "too_large",
                              "message": f"request body of {LIMIT + 1} bytes exceeds the limit of {LIMIT}"}}


def test_server_fields_and_paths_outside_the_roots_are_422_and_the_service_answers_after(jobs_api):
    server, root = jobs_api
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api:
        tracking = api.post("/v1/jobs", json={"kind": "train", "spec": {"tracking_uri": "sqlite:////x.db"}})
        assert tracking.status_code == 422
        assert tracking.json()["error"]["code"] == "server_field"
        assert "field 'tracking_uri' is set by the server" in tracking.json()["error"]["message"]

        outside = f"{root}/data/../etc"
        path = api.post("/v1/jobs", json={"kind": "train", "spec": {"data_dir": outside}})
        assert path.status_code == 422
        assert path.json() == {"error": {"code": "path_not_allowed", "message": (
            f"field 'data_dir': {outside!r} (= {str(root / 'etc')!r}) is outside the allowed roots: "
            f"{root / 'data'}")}}

        # Still serving: health, the typed request body, and an admitted request goes on to the
        # (absent) cluster.
        assert api.get("/healthz").json() == {"status": "ok"}
        schemas = api.get("/openapi.json").json()["components"]["schemas"]
        assert {"TrainSpec", "SweepSpec", "ExportSpec"} <= set(schemas)
        listed = api.get("/v1/jobs")
        assert listed.status_code == 503 and listed.json()["error"]["code"] == "cluster_unavailable"
    assert not (root / "x.db").exists()


@pytest.mark.parametrize("token, problem", [(None, "is required"), ("tok3n", "is too short")])
def test_without_a_valid_token_startup_is_one_line_and_status_2(tmp_path, token, problem):
    env = clean_env(**({"WALDO_JOBS_TOKEN": token} if token else {}))
    done = subprocess.run([sys.executable, "-m", "services.jobs", "--port", str(free_port())], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"waldo-jobs: error: WALDO_JOBS_TOKEN: {problem}: give 16 or more characters, e.g. from "
        "`openssl rand -hex 24`"]
    assert "Traceback" not in done.stderr and done.stdout == ""
