"""The aiohttp load generator (a separate process) and its driver.

Run as `python -m serving_peers.aiohttp_load URL BODY_FILE --concurrency N.. --duration S
--warmup S [--content-type T]`: for each N, N workers (up to N keep-alive connections) POST the
body back to back, `--warmup` seconds not counted, then `--duration` measured seconds. It prints
"mark" when a measured window opens and when it closes (the driver reads the server's CPU time
there) and one JSON line per level.

aiohttp, not httpx: on this 2-core box an httpx AsyncClient tops out near 700 req/s against a
trivial FastAPI endpoint and collapses to 60-140 req/s at 64 concurrent requests (its connection
pool), so it, not the servers, would set the numbers; aiohttp keeps 2,000+ req/s at 1-64. httpx
remains the fallback when aiohttp is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run(server, url: str, body_file: Path, args, content_type: str = "application/json") -> list[dict]:
    """Load `server` at `url` with the body in `body_file`; add the server's CPU time per request
    over each measured window (all the processes of its session)."""
    from .process import ROOT

    cmd = [sys.executable, "-m", "serving_peers.aiohttp_load", url, str(body_file),
           "--concurrency", *map(str, args.concurrency), "--duration", str(args.duration),
           "--warmup", str(args.warmup), "--content-type", content_type]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bench"))
    gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    rows, marks = [], []
    for line in gen.stdout:
        if line.startswith("mark"):
            marks.append(server.cpu_seconds())
        elif line.startswith("{"):
            row = json.loads(line)
            cpu = marks[-1] - marks[-2] if len(marks) >= 2 else float("nan")
            done = row["rps"] * args.duration
            row["cpu_ms"] = 1e3 * cpu / done if done else float("nan")
            row["load"] = os.getloadavg()[0]
            rows.append(row)
    stderr = gen.stderr.read()
    if gen.wait() != 0:
        raise RuntimeError(f"load generator failed:\n{stderr[-3000:]}")
    return rows


def main(argv: list[str]) -> None:
    import numpy as np

    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("body", type=Path)
    p.add_argument("--concurrency", type=int, nargs="+", required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--warmup", type=float, required=True)
    p.add_argument("--content-type", default="application/json")
    args = p.parse_args(argv)
    body = args.body.read_bytes()
    headers = {"content-type": args.content_type}

    try:
        import aiohttp
    except ImportError:
        aiohttp = None
        import httpx

    async def level(n: int) -> dict:
        if aiohttp is not None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n),
                                            timeout=aiohttp.ClientTimeout(total=60))

            async def post() -> tuple[int, str]:
                async with session.post(args.url, data=body, headers=headers) as r:
                    text = await r.read()
                    return r.status, text[:200].decode(errors="replace")
        else:
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            session = httpx.AsyncClient(limits=limits, timeout=60)

            async def post() -> tuple[int, str]:
                r = await session.post(args.url, content=body, headers=headers)
                return r.status_code, r.text[:200]

        t_measure = time.perf_counter() + args.warmup
        t_end = t_measure + args.duration
        latencies, done_in_window, errors, first_error = [], 0, 0, None

        async def worker():
            nonlocal done_in_window, errors, first_error
            while (start := time.perf_counter()) < t_end:
                try:
                    status, text = await post()
                    ok = status == 200
                    if not ok and first_error is None:
                        first_error = f"HTTP {status}: {text}"
                except Exception as exc:  # connection errors of either client
                    ok = False
                    first_error = first_error or f"{type(exc).__name__}: {exc}"
                end = time.perf_counter()
                if start >= t_measure:
                    latencies.append(end - start)
                    errors += not ok
                if t_measure <= end <= t_end and ok:
                    done_in_window += 1

        async def marks():  # tell the parent when the measured window opens and closes
            await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
            print("mark", flush=True)
            await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
            print("mark", flush=True)

        try:
            await asyncio.gather(marks(), *(worker() for _ in range(n)))
        finally:
            await (session.close() if aiohttp is not None else session.aclose())
        lat = np.asarray(latencies) * 1e3
        return {"concurrency": n, "rps": done_in_window / args.duration, "count": len(lat),
                "errors": errors, "first_error": first_error,
                "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
                "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
                "client": "aiohttp" if aiohttp is not None else "httpx"}

    async def levels():
        for n in args.concurrency:
            print(json.dumps(await level(n)), flush=True)

    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(levels())


if __name__ == "__main__":
    main(sys.argv[1:])
