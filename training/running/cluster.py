"""`waldo cluster up|status|down`: a persistent Ray head on this machine, with its dashboard.

A job that starts its own local Ray pays for it every time (the GCS, the raylet, the dashboard,
fresh worker processes: about 18 s to a 1-worker job's first batch on 2 cores). A head that
stays up makes that cost once. While it runs, `waldo train --workers N` and `waldo sweep` join it
(unless --ray-address or RAY_ADDRESS says otherwise), and its dashboard is where the jobs API
submits by default (`WALDO_JOBS_RAY_ADDRESS=http://127.0.0.1:8265`).

The head runs as `ray start --head --block` in a session of its own, with Ray's token
authentication (its GCS listens on the machine's address, not only on 127.0.0.1): a fresh token
in a file beside the state file, readable by this user alone. Its address, process id and token
file are kept in the state file (`WALDO_CLUSTER_FILE`, default `~/.cache/waldo/cluster.json`);
`waldo` sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH for its own jobs, and other clients
(the jobs API, `ray` itself) need the same two variables. `down` ends exactly that session,
never another Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from training.errors import WaldoError

DEFAULT_PORT, DEFAULT_DASHBOARD_PORT = 6379, 8265
START_TIMEOUT_S = 60.0
# On SIGTERM, `ray start --block` first drains its node, for up to 30 s by default, so that
# Serve proxies elsewhere stop routing to it. This head is the whole cluster: there is no one to
# hand work to, and a detached actor (Ray Data's autoscaling coordinator, left by any job that
# used Ray Data or Train) keeps the node from ever draining, so every `down` after a job waited
# out the 30 s. Without the drain the head stops its processes at once (about 5 s on 2 cores).
NO_DRAIN = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def state_file() -> Path:
    given = os.environ.get("WALDO_CLUSTER_FILE")
    return Path(given) if given else Path.home() / ".cache" / "waldo" / "cluster.json"


def _listening(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def running() -> dict | None:
    """The running cluster's state ({address, dashboard, pid, log}), or None."""
    try:
        state = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return None
    if not _alive(int(state.get("pid", 0))) or not _listening(state.get("address", "")):
        return None
    return state


def auth_env(state: dict) -> dict[str, str]:
    """What a client of the cluster needs in its environment."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state["token_file"]}


def address() -> str | None:
    """The GCS address of the running cluster, for jobs that name no Ray address; this process
    then holds the cluster's token settings (its Ray workers inherit them)."""
    state = running()
    if state is None:
        return None
    for key, value in auth_env(state).items():
        os.environ.setdefault(key, value)
    return state["address"]


def up(*, port: int = DEFAULT_PORT, dashboard_port: int = DEFAULT_DASHBOARD_PORT,
       num_cpus: int | None = None) -> dict:
    state = running()
    if state is not None:
        return {**state, "started": False}
    for taken in (port, dashboard_port):
        if _listening(f"127.0.0.1:{taken}"):
            raise WaldoError(f"port {taken} is in use already (another Ray?); choose others with "
                             "--port / --dashboard-port")
    from training.running.workerenv import WORKER_ENV

    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    log, token_file = path.with_suffix(".log"), path.with_suffix(".token")
    token_file.touch(mode=0o600)
    token_file.chmod(0o600)
    token_file.write_text(secrets.token_hex(32))
    ray = str(Path(sys.executable).with_name("ray"))
    argv = [ray, "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}", "--include-dashboard=true", "--disable-usage-stats",
            *([f"--num-cpus={num_cpus}"] if num_cpus else [])]
    with log.open("w") as out:
        state = {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard_port}",
                 "log": str(log), "token_file": str(token_file)}
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **WORKER_ENV, **auth_env(state),
                                     "RAY_USAGE_STATS_ENABLED": "0", **NO_DRAIN})
    state["pid"] = proc.pid
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (_listening(state["address"]) and _listening(f"127.0.0.1:{dashboard_port}")):
        if proc.poll() is not None or time.monotonic() > deadline:
            _end(proc.pid)
            tail = " ".join(log.read_text(errors="replace").split()[-40:])
            raise WaldoError(f"the Ray head did not start (see {log}): {tail[-300:]}")
        time.sleep(0.25)
    path.write_text(json.dumps(state))
    path.chmod(0o600)
    return {**state, "started": True}


def _session(sid: int) -> list[int]:
    """Live processes of session `sid` (Linux /proc): the head and all it spawned, including
    Ray's workers, which make process groups of their own."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _end(sid: int, timeout: float = 30.0) -> None:
    """SIGTERM the head (`ray start --block` then stops what it started, in order), then
    SIGKILL whatever of its session is left.

    The head alone gets the signal: sent to the whole session, it also reached the GCS at once,
    and the raylet, its GCS gone, never exited on its own (every `down` waited out the 30 s and
    killed it). The head starts with no drain on SIGTERM (`NO_DRAIN`)."""
    try:
        os.kill(sid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while _session(sid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _session(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while _session(sid) and time.monotonic() < deadline:  # killed processes take a moment to go
        time.sleep(0.1)


def down() -> dict | None:
    """End the cluster `up` started (its whole session); None if none was running."""
    path = state_file()
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    _end(int(state["pid"]))
    path.unlink(missing_ok=True)
    Path(state.get("token_file", path.with_suffix(".token"))).unlink(missing_ok=True)
    return state


def status() -> dict | None:
    """The running cluster's state with its resources (CPUs, GPUs, nodes), or None."""
    state = running()
    if state is None:
        return None
    os.environ.update(auth_env(state))  # before Ray is imported: it reads them then
    import ray

    try:
        ray.init(address=state["address"], logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError) as exc:
        raise WaldoError(f"the Ray head at {state['address']} does not answer: "
                         f"{' '.join(str(exc).split())[:200]}") from None
    try:
        resources = ray.cluster_resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    finally:
        ray.shutdown()
    return {**state, "nodes": nodes, "cpus": resources.get("CPU", 0.0), "gpus": resources.get("GPU", 0.0)}


__all__ = ["address", "down", "running", "status", "up"]
