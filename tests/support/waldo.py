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


def waldo_main(capsys, *args: str) -> tuple[int, str, str]:
    """`waldo ARGS...` in this process through `waldo.cli.main`, cheaper than a subprocess where
    the console script itself is not what is tested: (status, stdout, stderr). argparse's own
    errors (SystemExit) give their status too."""
    from waldo.cli import main

    try:
        status = main(list(args))
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def user_error_line(status: int | None, err: str) -> str:
    """The one line a user error prints: status 2, one non-blank line on stderr, no traceback
    (fails the test otherwise)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert status == 2 and len(lines) == 1, f"status {status}, expected 2 and one line:\n{err}"
    return lines[0]


def error_line(err: str, command: str) -> str:
    """The one `waldo COMMAND: error:` line on stderr (fails the test on a traceback, or on
    none or several such lines)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"waldo {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def modules_loaded_by(script: str) -> set[str]:
    """Top-level modules in sys.modules after running `script` in a fresh interpreter."""
    code = script + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))
