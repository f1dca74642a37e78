"""Schemathesis fuzzes the running service from its own OpenAPI schema: whatever it sends,
nothing comes back as a 500."""

from __future__ import annotations

import subprocess

import httpx
import pytest
from support import BIN, start_server, waldo_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    server = start_server(lambda port: [*waldo_command(), "serve", "--models", str(model_repo[0]),
                                        "--host", "127.0.0.1", "--port", str(port),
                                        "--log-level", "warning"],
                          workdir=tmp_path_factory.mktemp("fuzz"))
    try:
        yield server.url, server.log
    finally:
        server.stop()


def test_schemathesis_finds_no_server_error(server, tmp_path):
    url, log = server
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.name" = "cnn"\n')  # a served model, so routes get past 404
    proc = subprocess.run(
        [str(BIN / "st"), "--config-file", str(config), "run", f"{url}/openapi.json", "--checks",
         # every route, repository control included: it is off by default (403), so nothing the
         # fuzzer sends can unload the model and turn the predictions after it into 503s
         "not_a_server_error", "--max-examples", "60", "--seed", "7", "--request-timeout", "30"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)  # .schemathesis/ lands there
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-4000:]
    assert "24 selected / 24 total" in report and " passed" in report
    assert httpx.get(f"{url}/healthz").status_code == 200  # still answering
    assert "Traceback" not in log.read_text()
