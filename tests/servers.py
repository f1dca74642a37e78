"""Helpers for tests that run real servers on 127.0.0.1 (mlflow, uvicorn, Ray nodes)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """End a server started with `start_new_session=True` and everything it spawned: SIGTERM
    to its process group (uvicorn and mlflow shut down gracefully), SIGKILL after 20 s, and a
    final SIGKILL for children that outlived the parent."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
