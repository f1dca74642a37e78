"""Real processes for the tests: a clean environment, a free port, a server started in its own
session and waited for, and a way to end it with everything it spawned."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # the venv's bin: waldo, mlflow, ray, st
STARTUP_TIMEOUT_S = 120  # 2 loaded cores, and other test runs beside us


# --- environment and ports --------------------------------------------------------------------
def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child, minus what would point it elsewhere: no
    inherited tracking server, Ray address, running `waldo cluster` or WALDO_* settings.
    Unbuffered, uncoloured output; the venv's bin first on PATH, so `python`, `ray` and `waldo`
    there are this interpreter's.
    `extra` is added last."""
    dropped = {"MLFLOW_TRACKING_URI", "RAY_ADDRESS"}
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("WALDO_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1", NO_COLOR="1",
               RAY_USAGE_STATS_ENABLED="0",
               WALDO_CLUSTER_FILE=os.devnull)  # never join a `waldo cluster up` of the developer's
    env.update(extra)
    return env


def free_port() -> int:
    """A port nothing listens on right now. Another process may take it before ours binds it:
    `start_server` retries on another port when that happens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- stopping ---------------------------------------------------------------------------------
def session_pids(sid: int) -> list[int]:
    """Live processes of session `sid` (Linux /proc; empty elsewhere): a process started with
    `start_new_session=True` and all it spawned, including those that made their own process
    group (Ray's workers)."""
    if not Path("/proc/self/stat").exists():
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # state ppid pgrp session ...
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def stop_group(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """End a process started with `start_new_session=True` and everything it spawned: SIGTERM to
    its process group (uvicorn, mlflow and `ray start --block` shut down gracefully), SIGKILL
    after `grace_s`, then SIGKILL for anything left in its session. Nothing else is touched."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the parent
    except (ProcessLookupError, PermissionError):
        pass
    for pid in session_pids(proc.pid):  # and those that left its process group
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# --- waiting ----------------------------------------------------------------------------------
def log_tail(log: Path | None, chars: int = 4000) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-chars:]


def wait_until(predicate: Callable[[], object], *, what: str, timeout: float = STARTUP_TIMEOUT_S,
               proc: subprocess.Popen | None = None, log: Path | None = None,
               detail: Callable[[], object] | None = None, interval: float = 0.25) -> None:
    """Poll `predicate` until it is true. Fails the test when `timeout` passes or `proc` exits
    first, with the tail of `log` and `detail()` (e.g. the last answer) in the message."""
    deadline = time.monotonic() + timeout
    while not predicate():
        exited = proc is not None and proc.poll() is not None
        if exited or time.monotonic() > deadline:
            why = (f"{Path(str(proc.args[0])).name} exited with {proc.returncode} first" if exited
                   else f"not after {timeout:.0f} s")
            more = [str(detail()) if detail is not None else "", log_tail(log)]
            pytest.fail("\n".join([f"{what}: {why}", *filter(None, more)]), pytrace=False)
        time.sleep(interval)


def poll(predicate: Callable[[], object], *, timeout: float, interval: float = 0.2) -> bool:
    """Poll `predicate` until it is true or `timeout` passes; whether it came true. For a wait
    whose end is welcome but not required (`wait_until` fails the test instead)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


# The tests' servers are on 127.0.0.1: never through a proxy. (urllib's module-wide opener
# reads the proxy variables once, when it is first used: a test that sets them, as the offline
# download tests do, would otherwise send every later check to its dead proxy.)
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, timeout: float = 3) -> int | None:
    """The status `GET url` answers with, or None when nothing answers."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def wait_http(url: str, *, status: Iterable[int] = (200,), timeout: float = STARTUP_TIMEOUT_S,
              proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait until `GET url` answers with one of `status` (see `wait_until`)."""
    accepted = set(status)
    wait_until(lambda: http_status(url) in accepted, what=f"GET {url} -> {sorted(accepted)}",
               timeout=timeout, proc=proc, log=log)


# --- starting ---------------------------------------------------------------------------------
def start_process(argv: Sequence[str], *, log: Path, cwd: Path,
                  env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start `argv` in its own session (so `stop_group` ends it and all it spawns), stdout and
    stderr into `log`, with `clean_env()` unless `env` is given."""
    with log.open("w") as out:
        return subprocess.Popen(list(argv), cwd=cwd, env=dict(env) if env is not None else clean_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@dataclass
class Server:
    """A server process on 127.0.0.1 and its log."""

    url: str
    proc: subprocess.Popen
    log: Path

    def tail(self, chars: int = 4000) -> str:
        return log_tail(self.log, chars)

    def stop(self) -> None:
        stop_group(self.proc)


def start_server(argv_for_port: Callable[[int], Sequence[str]], *, workdir: Path,
                 ready: str = "/readyz", env: Mapping[str, str] | None = None,
                 timeout: float = STARTUP_TIMEOUT_S, attempts: int = 3) -> Server:
    """Run `argv_for_port(port)` on a free port until `GET <url><ready>` answers 200; on another
    port if the one picked was taken meanwhile (other test runs share this machine)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        port = free_port()
        log = workdir / f"server-{port}.log"
        server = Server(f"http://127.0.0.1:{port}", start_process(argv_for_port(port), log=log,
                                                                  cwd=workdir, env=env), log)
        deadline = time.monotonic() + timeout
        while http_status(server.url + ready) != 200:
            if server.proc.poll() is not None:
                if "address already in use" in server.tail().lower() and attempt + 1 < attempts:
                    break
                pytest.fail(f"{server.url}: exited with {server.proc.returncode} before it was "
                            f"ready\n{server.tail()}", pytrace=False)
            if time.monotonic() > deadline:
                server.stop()
                pytest.fail(f"{server.url}{ready}: not 200 after {timeout:.0f} s\n{server.tail()}",
                            pytrace=False)
            time.sleep(0.25)
        else:
            return server
    raise AssertionError("unreachable")


class Processes:
    """Processes started for one fixture, each in its own session, logging into `root`; `stop()`
    (or leaving the `with` block) ends them, newest first."""

    def __init__(self, root: Path, env: Mapping[str, str] | None = None):
        self.root, self.env = root, dict(env) if env is not None else clean_env()
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *argv: str, env: Mapping[str, str] | None = None
              ) -> tuple[subprocess.Popen, Path]:
        """Start `argv` with this group's environment plus `env`; (process, its log file)."""
        log = self.root / f"{name}.log"
        proc = start_process(argv, log=log, cwd=self.root, env={**self.env, **(env or {})})
        self.procs.append(proc)
        return proc, log

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_group(proc)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
