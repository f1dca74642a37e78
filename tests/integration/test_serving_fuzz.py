"""Schemathesis fuzzes the running service (on the tiny models of `tiny_repo`) from its own
OpenAPI schema: whatever it sends, nothing comes back as a 500."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from support import BIN
from support.serving import waldo_serve

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def server(tiny_repo, tmp_path_factory):
    server = waldo_serve(tiny_repo[0], tmp_path_factory.mktemp("fuzz"), "--log-level", "warning")
    try:
        yield server.url, server.log
    finally:
        server.stop()


def schemathesis(url: str, workdir: Path, *phases: str, examples: int) -> str:
    """Run `st` on the service's schema with `phases`; its report, after checking that it
    passed on every route."""
    config = workdir / "schemathesis.toml"
    # a served model and its version, so that routes get past 404
    config.write_text('[parameters]\n"path.name" = "cnn"\n"path.version" = "1"\n')
    proc = subprocess.run(
        [str(BIN / "st"), "--config-file", str(config), "run", f"{url}/openapi.json", "--checks",
         # every route, repository control included: it is off by default (403), so nothing the
         # fuzzer sends can unload the model and turn the predictions after it into 503s
         "not_a_server_error", "--phases", ",".join(phases), "--max-examples", str(examples),
         "--seed", "7", "--request-timeout", "30"],
        capture_output=True, text=True, timeout=600, cwd=workdir)  # .schemathesis/ lands there
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-4000:]
    schema = httpx.get(f"{url}/openapi.json").json()
    operations = sum(method in {"get", "put", "post", "delete", "patch", "head", "options"}
                     for path in schema["paths"].values() for method in path)
    assert operations >= 25  # predict, explain, v2 infer, repository control, ...
    assert f"{operations} selected / {operations} total" in report and " passed" in report, report[-4000:]
    return report


def test_schemathesis_finds_no_server_error(server, tmp_path):
    """The schema's examples, the boundary values of every parameter (coverage), and 30 random
    requests per route."""
    url, log = server
    schemathesis(url, tmp_path, "examples", "coverage", "fuzzing", examples=30)
    assert httpx.get(f"{url}/healthz").status_code == 200  # still answering
    assert "Traceback" not in log.read_text()


@pytest.mark.slow  # about 25 s on 2 cores
def test_schemathesis_sequences_of_calls_find_no_server_error(server, tmp_path):
    """Sequences of calls that feed one answer into the next request (schemathesis' stateful
    phase)."""
    url, log = server
    schemathesis(url, tmp_path, "stateful", examples=30)
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert "Traceback" not in log.read_text()
