"""Fixtures shared by every test: the `waldo` command as a real subprocess, a scratch working
folder for anything that trains (mlflow.db, mlruns/ and waldo_runs/ land there), a real MLflow
tracking server on 127.0.0.1, and a repository of exported models."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import free_port, stop_group

BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[1]


def waldo_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m training.cli`."""
    script = BIN / "waldo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "training.cli"]


def waldo_env() -> dict[str, str]:
    """A clean environment: no inherited tracking server, plain (uncoloured) output."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONUNBUFFERED="1", NO_COLOR="1")
    return env


def start_waldo(*args: str, cwd: Path) -> subprocess.Popen:
    """Start `waldo ARGS...` in `cwd` without waiting (so several can run at once)."""
    return subprocess.Popen(
        [*waldo_command(), *args], cwd=cwd, env=waldo_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def run_waldo(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    proc = start_waldo(*args, cwd=cwd)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_waldo_all(cases: dict[str, list[str]], *, cwd: Path,
                  timeout: float = 240) -> dict[str, tuple[int, str, str]]:
    """Run several `waldo` commands at once; {case: (returncode, stdout, stderr)}."""
    procs = {case: start_waldo(*argv, cwd=cwd) for case, argv in cases.items()}
    out = {}
    for case, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except Exception:
            proc.kill()
            raise
        out[case] = (proc.returncode, stdout, stderr)
    return out


def modules_loaded_by(script: str) -> set[str]:
    """Top-level modules in sys.modules after running `script` in a fresh interpreter."""
    import json

    code = script + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in an empty working folder, with no tracking URI from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def waldo():
    """The `waldo` command as helpers: `waldo.start(*args, cwd=...)`, `waldo.run(...)`."""

    class Waldo:
        start = staticmethod(start_waldo)
        run = staticmethod(run_waldo)
        run_all = staticmethod(run_waldo_all)
        command = staticmethod(waldo_command)

    return Waldo


@pytest.fixture(scope="session")
def loaded_modules():
    """`loaded_modules(script)`: top-level modules a fresh interpreter holds after `script`."""
    return modules_loaded_by


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory):
    """A model repository with two real models, trained here and exported by `export_run`:
    `cnn` (digits classifier, 97%+ test accuracy) and `cnn-localize` (one digit on a 32x32
    canvas). Yields (repository folder, {name: ExportResult}); the results hold the checkpoints.
    """
    from training.export import export_run
    from training.spec import TrainSpec
    from training.train import train

    work = tmp_path_factory.mktemp("model-repo")
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        cls = train(TrainSpec(model="cnn", epochs=8, progress_bar=False, experiment="serving-fixture"))
        loc = train(TrainSpec(task="localize", model="cnn", data="localization-digits", epochs=3,
                              data_args={"canvas_size": 32, "train_size": 1500, "eval_size": 200},
                              progress_bar=False, experiment="serving-fixture"))
        exported = {
            "cnn": export_run(cls.run_id, name="cnn", output=work / "models"),
            "cnn-localize": export_run(loc.run_id, name="cnn-localize", output=work / "models"),
        }
    finally:
        mp.undo()
    for result in exported.values():
        result.checkpoint = (work / result.checkpoint).resolve()
    return work / "models", exported


# --- a real MLflow tracking server on 127.0.0.1 -----------------------------------------------
STARTUP_TIMEOUT_S = 90


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start `mlflow server` with a SQLite store and proxied artifacts; yield its URL."""
    root: Path = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_exe = Path(sys.executable).parent / "mlflow"
    cmd = [
        str(mlflow_exe), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # The server's background job runner (a pool of huey consumers) is not needed for
    # tracking and would compete for the CPU with the training under test.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(url):
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n"
                            f"{(root / 'server.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {STARTUP_TIMEOUT_S}s:\n"
                            f"{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(proc)
        log.close()
