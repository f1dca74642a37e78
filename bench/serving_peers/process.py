"""Starting, health-checking, measuring and stopping one server process (and everything it spawns)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root: `serving` imports from here
BENCH_VENVS = ROOT / ".bench-venvs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_python(venv: str | None) -> Path:
    """The interpreter of a peer's venv (.bench-venvs/<venv>), or this one when `venv` is None."""
    return Path(sys.executable) if venv is None else BENCH_VENVS / venv / "bin" / "python"


def server_env(threads: int, venv: str | None = None, **extra: str) -> dict[str, str]:
    """The same thread budget for every server, `serving` and `serving_peers` importable, and
    the server's own venv first on PATH (`mlflow models serve` runs `uvicorn` from PATH)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WALDO_", "MLFLOW_", "VIRTUAL_ENV", "PYTHONHOME"))}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "bench")]),
               PATH=os.pathsep.join([str(venv_python(venv).parent), os.environ.get("PATH", "")]))
    env.update(extra)
    return env


def _proc_table() -> dict[int, tuple[int, int, int, int]]:
    """pid -> (ppid, pgrp, session, user + system ticks) of every live process (Linux /proc)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = stat.read_text().rsplit(")", 1)[1].split()
            table[int(stat.parent.name)] = (int(f[1]), int(f[2]), int(f[3]), int(f[11]) + int(f[12]))
        except (OSError, IndexError, ValueError):
            continue
    return table


def members(root: int, table: dict | None = None) -> set[int]:
    """The live processes of a server started with start_new_session (sid = pgid = `root`):
    its session and process group, plus every descendant of those, because some servers move
    their children into sessions of their own (BentoML's circus arbiter does, for its worker)."""
    table = _proc_table() if table is None else table
    found = {pid for pid, (_, pgrp, sid, _) in table.items() if root in (pgrp, sid)}
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def session_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of the live processes of the server rooted at `root`."""
    table = _proc_table()
    return sum(table[pid][3] for pid in members(root, table)) / os.sysconf("SC_CLK_TCK")


class Server:
    """One server process in its own session, so that stop() also ends what it spawned (mlflow ->
    uvicorn, LitServe -> API server + worker, pytriton -> tritonserver + Python backend stub, Ray
    -> GCS, raylet, proxy, controller, replica, BentoML -> circus arbiter + worker)."""

    def __init__(self, title: str, cmd: list[str], env: dict[str, str], health: str, log: Path,
                 cwd: Path):
        self.title, self.cmd, self.env, self.health, self.log, self.cwd = title, cmd, env, health, log, cwd
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> float:
        import httpx

        started = time.perf_counter()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.title} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(self.health, timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.title} not healthy after {timeout} s:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        return session_cpu_seconds(self.proc.pid) if self.proc else float("nan")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 15 s; then SIGKILL whatever of
        its other members (see `members`) is left 5 s later."""
        if self.proc is None:
            return
        pid = self.proc.pid
        others = members(pid) - {pid}  # before they are orphaned and lose their parent link
        if self.proc.poll() is None:
            try:
                os.killpg(pid, signal.SIGTERM)
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        for i in range(40):  # stragglers in other groups: 5 s to exit on their own, then SIGKILL
            table = _proc_table()
            left = [p for p in others if p in table] + [p for p in members(pid, table) if p != pid]
            if not left:
                break
            for other in left if i >= 20 else []:
                try:
                    os.kill(other, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.25)

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def venv_problem(venv: str | None) -> str | None:
    """Why a peer's venv cannot be used, or None."""
    if venv is None:
        return None
    if not (BENCH_VENVS / venv / ".ready").exists():
        return (f"no venv .bench-venvs/{venv} (run bench/serving_peers/setup.sh {venv}; "
                f"its pip log: .bench-venvs/{venv}/pip.log)")
    return None


def peer_server(ctx, peer, cmd_tail: list[str], health_path: str, grpc: bool = False,
                **env: str) -> Server:
    """A peer's serve() run as `python -m serving_peers.<module> ARGS` in its venv, with the
    model folder, ports, threads and batching settings that every peer takes."""
    port = free_port()
    grpc_port = free_port() if grpc else None
    cmd = [str(venv_python(peer.venv)), "-m", f"serving_peers.{peer.module}",
           "--model-dir", str(ctx.model_dir), "--port", str(port), "--threads", str(ctx.args.threads),
           "--max-batch-size", str(ctx.args.max_batch_size), "--max-delay-ms", str(ctx.args.max_delay_ms),
           *(["--grpc-port", str(grpc_port)] if grpc else []), *cmd_tail]
    tmp = ctx.work / f"tmp-{peer.name}"  # what the peer leaves in TMPDIR goes with the work folder
    tmp.mkdir(exist_ok=True)
    server = Server(peer.title, cmd, server_env(ctx.args.threads, peer.venv, TMPDIR=str(tmp), **env),
                    f"http://127.0.0.1:{port}{health_path}", ctx.work / f"server-{peer.name}.log", ctx.work)
    server.http = f"http://127.0.0.1:{port}"
    server.grpc = f"127.0.0.1:{grpc_port}" if grpc else None
    return server


def serve_args(argv: list[str] | None = None):
    """The arguments every peer's `python -m serving_peers.<peer>` takes."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--grpc-port", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    return p.parse_args(argv)
