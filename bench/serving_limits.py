"""Memory and connection limits of the inference service, against a baseline revision.

    .venv/bin/python bench/serving_limits.py --models ./models [--baseline-rev f0cc6aa]

Each scenario starts its own `waldo serve` (so that the peak resident memory, VmHWM, is the
scenario's own) for the code here and for the baseline revision (checked out into a temporary
git worktree and run from there), and prints one line per figure with the ratio:

- peak RSS while serving 1 and 4 concurrent requests of 64 PNGs of 4096x4096 (the pixel limit),
  with the per-request pixel budget raised so that they are decoded, and what the default budget
  answers;
- `/healthz` latency with 1,000 idle connections open, and with the server's open-file limit
  below the number of idle connections (and how many log lines that produced);
- how long a connection that sends nothing stays open.

The machine's load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def big_png(seed: int) -> bytes:
    image = Image.new("RGB", (4096, 4096), (seed * 37 % 256, 90, 160))
    draw = ImageDraw.Draw(image)
    for i in range(40):
        x, y = i * 97 % 4000, i * 53 % 4000
        draw.rectangle([x, y, x + 60, y + 60], fill=(i * 6, 0, 0))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


class Server:
    def __init__(self, code: Path, models: Path, env: dict[str, str], nofile: int | None = None):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)

        def limit():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        argv = [PYTHON, "-c", "import sys; from serving.cli import main; sys.exit(main(sys.argv[1:]))",
                "--models", str(models), "--port", str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(argv, cwd=code, env={**os.environ, "PYTHONPATH": str(code), **env},
                                     stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=limit)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = Path(self.log.name).read_text()[-2000:]
        self.stop()  # never leave a server behind that did not come up
        raise RuntimeError(f"server did not start: {tail}")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")

    def log_lines(self) -> int:
        return len(Path(self.log.name).read_text().splitlines())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.unlink(self.log.name)


def compatible_copy(models: Path, to: Path) -> Path:
    """The repository with its cards' unset fields left out: an older ModelCard (the baseline's)
    refuses keys it does not know, even `"weights": null`."""
    shutil.copytree(models, to)
    for card in to.glob("*/*/modelcard.json"):
        fields = json.loads(card.read_text())
        card.write_text(json.dumps({k: v for k, v in fields.items() if v is not None}))
    return to


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def predict_many(url: str, files: list[bytes], concurrent: int) -> list[int]:
    async with httpx.AsyncClient(timeout=600) as client:
        async def one():
            parts = [("file", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(files)]
            return (await client.post(url + "/v1/models/cnn/predict", files=parts)).status_code
        return list(await asyncio.gather(*(one() for _ in range(concurrent))))


def memory(code: Path, models: Path, files: list[bytes], concurrent: int, budget: str | None) -> tuple:
    env = {"WALDO_MAX_REQUEST_PIXELS": budget} if budget else {}
    server = Server(code, models, env)
    try:
        started = time.perf_counter()
        statuses = asyncio.run(predict_many(server.url, files, concurrent))
        return server.peak_rss_mb(), statuses, time.perf_counter() - started
    finally:
        server.stop()


def healthz_ms(url: str, tries: int = 20) -> float:
    times = []
    for _ in range(tries):
        started = time.perf_counter()
        try:
            httpx.get(url + "/healthz", timeout=10).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
        except httpx.HTTPError:
            times.append(float("inf"))
    times.sort()
    return times[len(times) // 2]


def idle_connections(code: Path, models: Path, count: int, nofile: int | None) -> tuple:
    server = Server(code, models, {}, nofile=nofile)
    sockets = []
    try:
        before = server.log_lines()
        for _ in range(count):
            try:
                sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            except OSError:
                break
        time.sleep(1.0)
        latency = healthz_ms(server.url)
        return latency, len(sockets), server.log_lines() - before
    finally:
        for s in sockets:
            s.close()
        server.stop()


def idle_open_s(code: Path, models: Path, cap_s: float = 30) -> float:
    server = Server(code, models, {})
    try:
        s = socket.create_connection(("127.0.0.1", server.port))
        s.settimeout(cap_s)
        started = time.perf_counter()
        try:
            s.recv(1)
        except TimeoutError:
            return float("inf")
        finally:
            s.close()
        return time.perf_counter() - started
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="a repository holding `cnn`")
    parser.add_argument("--baseline-rev", default="f0cc6aa", help="git revision to compare against")
    parser.add_argument("--idle", type=int, default=1000)
    args = parser.parse_args()
    models = args.models.resolve()
    baseline = Path(tempfile.mkdtemp(prefix="waldo-baseline-"))
    baseline_models = compatible_copy(models, baseline.with_name(baseline.name + "-models"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.baseline_rev],
                   check=True, capture_output=True)
    files = [big_png(i) for i in range(64)]
    print(f"64 PNGs of 4096x4096: {sum(map(len, files)) / 1e6:.1f} MB in all; load average "
          f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
    try:
        for concurrent in (1, 4):
            new = memory(ROOT, models, files, concurrent, str(2**31))
            old = memory(baseline, baseline_models, files, concurrent, None)
            print(f"peak RSS, {concurrent} request(s) x 64 PNGs: {new[0]:.0f} MB (statuses {new[1]}, "
                  f"{new[2]:.1f} s) vs baseline {old[0]:.0f} MB ({old[1]}, {old[2]:.1f} s): "
                  f"{new[0] / old[0]:.2f}x   [load {os.getloadavg()[0]:.2f}]")
        default = memory(ROOT, models, files, 1, None)
        print(f"default budget: 1 request x 64 PNGs -> statuses {default[1]} in {default[2]:.2f} s, "
              f"peak RSS {default[0]:.0f} MB")
        for label, nofile, count in (("", None, args.idle), (" (open-file limit 512)", 512, args.idle)):
            new = idle_connections(ROOT, models, count, nofile)
            old = idle_connections(baseline, baseline_models, count, nofile)
            print(f"/healthz median with {count} idle connections{label}: {new[0]:.1f} ms "
                  f"({new[1]} opened, {new[2]} log lines) vs baseline {old[0]:.1f} ms ({old[1]} opened, "
                  f"{old[2]} log lines)   [load {os.getloadavg()[0]:.2f}]")
        print(f"a connection that sends nothing stays open {idle_open_s(ROOT, models):.1f} s "
              f"(baseline: {idle_open_s(baseline, baseline_models):.1f} s, inf = still open after 30 s)")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)],
                       capture_output=True)
        shutil.rmtree(baseline, ignore_errors=True)
        shutil.rmtree(baseline_models, ignore_errors=True)


if __name__ == "__main__":
    main()
