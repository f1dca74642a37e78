"""Joining a Ray cluster, or starting a local Ray for this process, as every Ray job of Waldo's
does (`waldo train --workers`, `waldo sweep`, `waldo predict --workers`). Light: it imports
neither torch nor Lightning, so a driver that trains nothing (offline scoring) stays small.
"""

from __future__ import annotations

import math
import os
import socket

from training.errors import WaldoError
from training.running.workerenv import WORKER_ENV


def named_address(address: str | None) -> str | None:
    """The Ray cluster a job names: its own `address`, else $RAY_ADDRESS; None when it names
    none (it may then join `waldo cluster up`'s head, or start a Ray of its own)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None, min_cpus: float = 0) -> None:
    """Join the Ray cluster at `address` (or $RAY_ADDRESS), else start a local Ray with at
    least `min_cpus` logical CPUs (a job whose workers take every core still needs one for its
    Ray Data tasks)."""
    import ray

    if ray.is_initialized():
        return
    address = named_address(address)
    _check_reachable(address)
    try:
        # Workers must find this project's code: in a dev checkout it is on sys.path already;
        # on a cluster the images have it installed.
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                     runtime_env=None if _own_head(address) else {"env_vars": WORKER_ENV})
        else:
            cores = os.cpu_count() or 1
            start_local_ray(num_cpus=None if min_cpus <= cores else math.ceil(min_cpus))
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or "a local Ray"
        raise WaldoError(f"cannot connect to Ray at {where!r}: {' '.join(str(exc).split())[:200]}"
                         " (check --ray-address / RAY_ADDRESS, and RAY_AUTH_MODE=token with "
                         "the cluster's token)") from None
    configure_ray_data()


def _own_head(address: str) -> bool:
    """Whether `address` is the head that `waldo cluster up` keeps running. Its processes, and
    so all its Ray workers, have WORKER_ENV in their environment already (training.running.cluster.up),
    so a job joins it without a runtime env of its own: a job's runtime env makes Ray start
    every actor of the job (the Train controller, its helpers, the workers) in a new worker
    process set up for that env, 0.8-0.9 s each here, where without one the actor takes one of
    the head's idle workers (0.1-0.5 s)."""
    from training.running import cluster

    state = cluster.running()
    return state is not None and state["address"] == address


def start_local_ray(num_cpus: int | None = None):
    """Start a Ray of this machine alone, for this process; returns ray.init's context.

    Left to itself, `ray.init()` joins whatever cluster `ray start` last started on this
    machine, hence "local". And a process of the job that asks Ray's state API about its own
    cluster without an address (Ray Train's PlacementGroupCleaner does, to free the workers'
    CPUs when a controller dies without cleaning up, as a Tune trial stopped by ASHA does) finds
    the cluster the same way: with a second Ray on the machine it reads the wrong one, or none,
    and gives up, and the CPUs stay reserved. So the dashboard gets a port chosen here, and the
    job's processes its address.
    """
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**WORKER_ENV, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    context = ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1",
                       dashboard_port=port, log_to_driver=False, logging_level="ERROR",
                       runtime_env={"env_vars": env})
    configure_ray_data()
    return context


def configure_ray_data() -> None:
    """Ray Data settings of this driver's jobs, in its DataContext: datasets made after this
    (`training.data.raydata.plan`) carry them, also when a Train worker's split coordinator
    executes them again.

    - Parquet through Ray Data's V1 datasource. A training split is executed again every epoch
      (its augmentation is fresh each time), and the V2 datasource (Ray 2.60's default) lists
      the files again on every execution: it starts a pool of 32 footer-reading actors (new
      worker processes) and kills it afterwards, about 1.5-3 s on 2 cores before the first
      batch of each epoch, while the training worker waits. V1 reads the footers once, when
      the dataset is made, and an execution starts its read tasks at once (0.2-0.4 s to the
      first batch, measured with bench/ingest.py's packs).
    """
    from ray.data import DataContext

    DataContext.get_current().use_datasource_v2 = False


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a host:port nobody listens on; ray.init would retry for minutes."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise WaldoError(f"malformed Ray address {address!r}: expected HOST:PORT, e.g. "
                         "127.0.0.1:6379, or ray://HOST:10001")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise WaldoError(f"cannot connect to Ray at {address!r}: {exc.strerror or exc} "
                         "(is the head node up? check --ray-address / RAY_ADDRESS)") from None


__all__ = ["configure_ray_data", "connect", "named_address", "start_local_ray"]
