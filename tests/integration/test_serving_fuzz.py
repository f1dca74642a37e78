"""Schemathesis fuzzes the running service from its own OpenAPI schema: whatever it sends,
nothing comes back as a 500."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from servers import free_port, stop_group

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(model_repo, waldo, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("fuzz") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*waldo.command(), "serve", "--models", str(model_repo[0]), "--port",
                                 str(port), "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield url, log
    finally:
        stop_group(proc)


def test_schemathesis_finds_no_server_error(server, tmp_path):
    url, log = server
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.name" = "cnn"\n')  # a served model, so routes get past 404
    st = Path(sys.executable).parent / "st"
    proc = subprocess.run(
        [str(st), "--config-file", str(config), "run", f"{url}/openapi.json", "--checks",
         "not_a_server_error", "--max-examples", "60", "--seed", "7", "--request-timeout", "30"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)  # .schemathesis/ lands there
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-4000:]
    assert "7 selected / 7 total" in report and " passed" in report
    assert httpx.get(f"{url}/healthz").status_code == 200  # still answering
    assert "Traceback" not in log.read_text()
