"""A Ray cluster on 127.0.0.1 started as an operator would (`ray start`), and stopped without
`ray stop`, which ends every Ray process on the machine, other test runs' included.

Each node is `ray start --block` in a session of its own: the command stays in the foreground
and, on SIGTERM, shuts its node down; `stop_group` then ends whatever of that session is left.
Every port a node opens is a free one, so two nodes (or another Ray beside the test) never
collide on Ray's defaults (6379, 8265, 10001, the agents' ports).
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.processes import (
    BIN,
    Processes,
    clean_env,
    free_port,
    log_tail,
    stop_group,
    wait_http,
    wait_until,
)
from training.running.cluster import NO_DRAIN

LOCAL_RAY_CPUS = 3  # the session's local Ray (the `local_ray` fixture): two workers and Ray Data
STARTED = "Ray runtime started."  # what `ray start` prints once its node has joined
REGISTER_TIMEOUT = "timed out during startup"  # its raylet missed Ray's 30 s to register
REGISTER_ATTEMPTS = 3


def node_ports() -> list[str]:
    """`ray start` flags that put a node's own agents and managers on free ports."""
    flags = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
             "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port"]
    return [f"{flag}={free_port()}" for flag in flags]


@dataclass
class RayCluster:
    address: str  # 127.0.0.1:<GCS port>, for --ray-address and RAY_ADDRESS
    dashboard: str | None  # http://127.0.0.1:<port>: Ray's HTTP API, job submission included
    env: dict[str, str]  # the nodes' environment: a driver must share its token
    nodes: list = field(default_factory=list)  # the worker nodes' `ray start` processes

    def kill_node(self, i: int) -> None:
        """End worker node `i` at once (its raylet and everything it runs), as a lost machine."""
        stop_group(self.nodes[i])


@contextlib.contextmanager
def ray_cluster(root: Path, *, workers: int = 1, num_cpus: int = 1, dashboard: bool = False,
                env: dict[str, str] | None = None) -> Iterator[RayCluster]:
    """A head node and `workers` worker nodes, `num_cpus` CPUs each, with token authentication
    (every node and client shares a fresh token). Logs go to `root/ray-*.log`."""
    root.mkdir(parents=True, exist_ok=True)
    # No drain on SIGTERM, as `waldo cluster up` starts its head: a test's node has nothing to
    # hand over, and would wait out 30 s.
    env = {**clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), **NO_DRAIN),
           **(env or {})}
    gcs, dashboard_port = free_port(), free_port()
    address, url = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard_port}" if dashboard else None
    common = [f"--num-cpus={num_cpus}", "--disable-usage-stats", "--block"]
    head = [f"--port={gcs}", f"--ray-client-server-port={free_port()}",
            f"--include-dashboard={str(dashboard).lower()}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}"]
    try:
        with Processes(root, env) as procs:
            proc, log = procs.start("ray-head", str(BIN / "ray"), "start", "--head", *head, *common,
                                     *node_ports())
            wait_until(lambda: STARTED in log.read_text(errors="replace"), what="ray head node",
                       proc=proc, log=log)
            if url is not None:  # token auth is on: 401/403 also means it answers
                wait_http(f"{url}/api/version", status=(200, 401, 403), proc=proc, log=log)
            nodes = [start_worker(procs, i, address, common) for i in range(workers)]
            yield RayCluster(address, url, env, nodes)
    finally:
        forget_address(gcs)


def start_worker(procs: Processes, i: int, address: str, common: list[str]) -> subprocess.Popen:
    """Start worker node `i` and wait until it has joined. Ray gives a raylet a fixed 30 s to
    register with the GCS (`ray._private.node`, not configurable); on two loaded cores that wait
    has been missed once in CI, so a node that failed exactly that way is started again."""
    for attempt in range(REGISTER_ATTEMPTS):
        proc, log = procs.start(f"ray-worker{i}-{attempt}", str(BIN / "ray"), "start",
                                f"--address={address}", *common, *node_ports())
        wait_until(lambda log=log, proc=proc: (STARTED in log.read_text(errors="replace")
                                                or proc.poll() is not None),
                   what=f"ray worker node {i}", log=log)
        if STARTED in log.read_text(errors="replace"):
            return proc
        stop_group(proc)  # its raylet may outlive the failed `ray start`
        if REGISTER_TIMEOUT not in log.read_text(errors="replace") or attempt + 1 == REGISTER_ATTEMPTS:
            pytest.fail(f"ray worker node {i}: ray exited with {proc.returncode} first\n"
                        f"{log_tail(log)}", pytrace=False)


def forget_address(gcs_port: int) -> None:
    """Remove the address file `ray start` leaves for later `ray.init()` calls to join, if it
    names this cluster (`ray stop` would remove it, but also end every other Ray)."""
    from ray._common.utils import get_ray_address_file

    current = Path(get_ray_address_file(None))
    with contextlib.suppress(OSError):
        if current.read_text().strip().endswith(f":{gcs_port}"):
            current.unlink()
