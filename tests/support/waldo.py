"""The `waldo` command as a real subprocess, and fresh interpreters that report what they
imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.processes import BIN, clean_env

REPO_ROOT = Path(__file__).resolve().parents[2]


def waldo_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m waldo`."""
    script = BIN / "waldo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "waldo"]


def start_waldo(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `waldo ARGS...` in `cwd` (with `clean_env()` unless `env` is given), output piped,
    without waiting: several can run at once."""
    return subprocess.Popen([*waldo_command(), *args], cwd=cwd, env=env or clean_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_waldo(*args: str, cwd: Path, timeout: float = 180,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`waldo ARGS...` to the end; killed after `timeout` seconds."""
    return _finish(start_waldo(*args, cwd=cwd, env=env), timeout)


def run_waldo_all(cases: dict[str, list[str]], *, cwd: Path,
                  timeout: float = 240) -> dict[str, tuple[int, str, str]]:
    """Run several `waldo` commands at once; {case: (returncode, stdout, stderr)}."""
    procs = {case: start_waldo(*argv, cwd=cwd) for case, argv in cases.items()}
    try:
        done = {case: _finish(proc, timeout) for case, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {case: (p.returncode, p.stdout, p.stderr) for case, p in done.items()}


def modules_loaded_by(script: str) -> set[str]:
    """Top-level modules in sys.modules after running `script` in a fresh interpreter."""
    code = script + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))
