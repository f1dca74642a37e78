"""Driving Triton's `perf_analyzer` against any Open Inference Protocol endpoint (HTTP or gRPC).

Per concurrency level, two perf_analyzer runs with synchronous requests (one per concurrency
slot, batch 1 each): a warm-up of `--warmup` seconds (not counted; this perf_analyzer has no
warm-up option), then the measured run: time windows of `duration / 3` seconds until three in a
row agree within `--pa-stability` percent (at most `--pa-max-trials` windows). The default
stability, 999 %, takes the first three windows: a fixed `--duration` like the aiohttp
generator's. perf_analyzer's own default, 10 %, judged on p99 latency, is seldom met on a shared
2-core machine and then fails the run. Throughput and p50/p99 come from its CSV (`-f`), over
the last three windows. Server CPU per request: the server's CPU time over the measured run
divided by the requests of all its windows (each window's throughput x its length, from `-v`).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PASS = re.compile(r"Pass \[\d+\] throughput: ([0-9.]+) infer/sec")
COUNT = re.compile(r"Request count: (\d+)")


def binary() -> str | None:
    """.venv/bin/perf_analyzer (scripts/perf_analyzer.sh), else one on PATH."""
    here = Path(sys.executable).with_name("perf_analyzer")
    return str(here) if here.exists() else shutil.which("perf_analyzer")


def run(server, model: str, address: str, protocol: str, data_file: Path, args) -> list[dict]:
    """Load `server` at `address` (host:port) over `protocol` ('http' or 'grpc') at each of
    args.concurrency; one row per level, as the aiohttp generator gives them."""
    exe = binary()
    if exe is None:
        raise RuntimeError("perf_analyzer is not installed (run scripts/perf_analyzer.sh)")
    window_ms = max(200, int(args.duration * 1000 / 3))
    rows = []
    for n in args.concurrency:
        with tempfile.TemporaryDirectory(prefix="pa-") as tmp:
            out = Path(tmp) / "pa.csv"
            cmd = [exe, "-m", model, "-u", address, "-i", protocol, "--concurrency-range", str(n),
                   "-p", str(window_ms), "-s", str(args.pa_stability), "-r", str(args.pa_max_trials),
                   "--input-data", str(data_file), "--percentile", "99", "-f", str(out), "-v"]
            warm = max(100, int(args.warmup * 1000 / 3))
            subprocess.run([*cmd[:cmd.index("-p")], "-p", str(warm), "-s", "999", "-r", "3",
                            "--input-data", str(data_file)], capture_output=True, timeout=600)
            cpu0 = server.cpu_seconds()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            cpu = server.cpu_seconds() - cpu0
            text = proc.stdout + proc.stderr
            if proc.returncode != 0 or not out.exists():
                raise RuntimeError(f"perf_analyzer exited {proc.returncode} at concurrency {n}:\n"
                                   + "\n".join(text.strip().splitlines()[-8:]))
            with open(out) as f:
                rec = next(csv.DictReader(f))
        passes = [float(t) for t in PASS.findall(text)]
        sent = sum(passes) * window_ms / 1000
        count = COUNT.search(text)
        rows.append({"concurrency": n, "rps": float(rec["Inferences/Second"]),
                     "p50": float(rec["p50 latency"]) / 1e3, "p99": float(rec["p99 latency"]) / 1e3,
                     "count": int(count.group(1)) if count else 0, "errors": 0, "first_error": None,
                     "cpu_ms": 1e3 * cpu / sent if sent else float("nan"),
                     "load": os.getloadavg()[0], "client": f"perf_analyzer {protocol}",
                     "windows": len(passes)})
    return rows
