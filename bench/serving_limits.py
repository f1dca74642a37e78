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
- how long a connection that sends nothing stays open;
- `--only json-memory`: peak RSS of a fresh server parsing the costliest JSON bodies just under
  the body limit (16 MiB), one and four at once, against the goal of 300 MB and 600 MB;
- `--only answers`: the largest answer one request can make under the default settings, over
  HTTP (/v2, JSON and binary) and gRPC, and what a request naming its output 5,000 times gets;
- `--only grpc-flood`: `/healthz` latency (median, max) on new connections while 600 gRPC
  connections that send nothing or only the HTTP/2 preface are open against a server with an
  open-file limit of 512, and when gRPC inference answers again (needs a baseline with gRPC,
  e.g. `--baseline-rev eb155b7`).

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
import numpy as np
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


# --- JSON bodies under the limit, and the size of answers ------------------------------------
BODY_LIMIT = 16 * 2**20  # the default max_body_bytes
V1, V2 = "/v1/models/cnn/predict", "/v2/models/cnn/infer"
V2_HEAD = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,28,28],"data":['


def _fill(prefix: bytes, unit: bytes, suffix: bytes, limit: int = BODY_LIMIT) -> bytes:
    """prefix + unit repeated (its trailing comma dropped) + suffix, just under `limit` bytes."""
    count = (limit - 1024 - len(prefix) - len(suffix)) // len(unit)
    return prefix + (unit * count)[:-1] + suffix


def json_bodies() -> dict[str, tuple[str, bytes]]:
    """The JSON bodies just under the body limit that cost the most to parse: what Python's json
    makes of each value (a float 24 bytes, `{}` 64, `{"":{}}` 248) plus the list slot that holds
    it (8), per byte of JSON text; one long string with a 4-byte character (Python holds the
    text at 4 bytes a character); and the costliest bodies within the values budget
    (`max_json_values`): nested objects, floats, and short strings that each hold a 4-byte
    character."""
    from serving.settings import Settings

    budget = Settings.model_fields["max_json_values"].default - 64  # the head's own values

    def within(prefix: bytes, unit: bytes, per_unit: int, suffix: bytes) -> bytes:
        return prefix + (unit * (budget // per_unit))[:-1] + suffix

    emoji = '"\U0001F600AAAAAAAA",'.encode()  # 15 bytes, 1 value: a str of 10 four-byte characters
    chain = b'{"":' * 8 + b"{}" + b"}" * 8 + b","  # 9 dicts (1.5 kB) for 18 counted values
    return {
        "v1 nested objects within the values budget": (V1, within(b'{"instances":[[', chain, 18, b"]]}")),
        "v2 floats within the values budget": (V2, within(V2_HEAD, b"0.123456789,", 1, b"]}]}")),
        "v1 4-byte strings within the values budget": (V1, within(b'{"instances":[[', emoji, 1, b"]]}")),
        "v1 zeros (0,)": (V1, _fill(b'{"instances":[[', b"0,", b"]]}")),
        "v1 floats (0.5,)": (V1, _fill(b'{"instances":[[', b"0.5,", b"]]}")),
        "v1 empty objects ({},)": (V1, _fill(b'{"instances":[[', b"{},", b"]]}")),
        "v2 zeros (0,)": (V2, _fill(V2_HEAD, b"0,", b"]}]}")),
        "v2 nested objects ({\"\":{}},)": (V2, _fill(V2_HEAD, b'{"":{}},', b"]}]}")),
        "v1 one string with an emoji": (V1, _fill(b'{"instances":[{"b64":"', b"A",
                                                  "\U0001F600\"}]}".encode())),
    }


async def post_many(url: str, path: str, body: bytes, concurrent: int) -> list[int]:
    async with httpx.AsyncClient(timeout=600) as client:
        async def one():
            return (await client.post(url + path, content=body,
                                      headers={"content-type": "application/json"})).status_code
        return list(await asyncio.gather(*(one() for _ in range(concurrent))))


def json_memory(code: Path, models: Path, path: str, body: bytes, concurrent: int) -> tuple[float, list[int]]:
    server = Server(code, models, {})
    try:
        statuses = asyncio.run(post_many(server.url, path, body, concurrent))
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        return server.peak_rss_mb(), statuses
    finally:
        server.stop()


def idle_peak_mb(code: Path, models: Path) -> float:
    """A fresh server's peak after one small JSON request: what every figure starts from."""
    server = Server(code, models, {})
    try:
        body = json.dumps({"instances": [np.zeros((1, 28, 28)).tolist()]}).encode()
        asyncio.run(post_many(server.url, V1, body, 1))
        return server.peak_rss_mb()
    finally:
        server.stop()


def report_json_memory(new: Path, old: Path, models: Path, old_models: Path) -> None:
    bodies = json_bodies()
    print(f"fresh server after one small request: {idle_peak_mb(new, models):.0f} MB "
          f"(baseline {idle_peak_mb(old, old_models):.0f} MB)   [load {os.getloadavg()[0]:.2f}]")
    worst = {1: 0.0, 4: 0.0}
    for concurrent, goal in ((1, 300), (4, 600)):
        for name, (path, body) in bodies.items():
            mine = json_memory(new, models, path, body, concurrent)
            base = json_memory(old, old_models, path, body, concurrent)
            worst[concurrent] = max(worst[concurrent], mine[0])
            print(f"{concurrent} x {name}, {len(body) / 2**20:.2f} MiB: peak {mine[0]:.0f} MB (statuses "
                  f"{sorted(set(mine[1]))}) vs baseline {base[0]:.0f} MB ({sorted(set(base[1]))})   "
                  f"[load {os.getloadavg()[0]:.2f}]")
        print(f"worst JSON body under the limit, {concurrent} at once: peak {worst[concurrent]:.0f} MB; "
              f"goal {goal} MB: {'met' if worst[concurrent] <= goal else 'NOT met'}")


def _v2_request(rows: int, outputs: list[dict], binary_output: bool) -> tuple[bytes, dict]:
    """A v2 infer body of `rows` zero tensors as binary data, naming `outputs`."""
    blob = np.zeros((rows, 1, 28, 28), np.float32).tobytes()
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 1, 28, 28],
                                   "parameters": {"binary_data_size": len(blob)}}],
                       "outputs": outputs, "parameters": {"binary_data_output": binary_output}}).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head)),
                         "content-type": "application/octet-stream"}


def largest_answers(code: Path, models: Path, rows: int = 64, repeats: int = 5000) -> dict[str, tuple]:
    """What the largest requests under the default settings get, and one that names its output
    `repeats` times, over HTTP (/v2) and gRPC (`tritonclient.grpc`): {case: (status, answer
    bytes or None, request bytes)}."""
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    grpc_port = free_port()
    server = Server(code, models, {"WALDO_GRPC_PORT": str(grpc_port)})
    found: dict[str, tuple] = {}
    try:
        top = {"name": "probabilities", "parameters": {"classification": 1000}}
        cases = {"probabilities, JSON": ([{"name": "probabilities"}], False),
                 "probabilities, binary": ([{"name": "probabilities"}], True),
                 "classification of every class, JSON": ([top], False),
                 "classification of every class, binary": ([top], True),
                 f"probabilities named {repeats} times, JSON": ([{"name": "probabilities"}] * repeats, False)}
        with httpx.Client(base_url=server.url, timeout=600) as client:
            for what, (outputs, binary) in cases.items():
                body, headers = _v2_request(rows, outputs, binary)
                answer = client.post(V2, content=body, headers=headers)
                found[f"HTTP {what}"] = (str(answer.status_code), len(answer.content), len(body))
        grpc = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        x = tgrpc.InferInput("input", [rows, 1, 28, 28], "FP32")
        x.set_data_from_numpy(np.zeros((rows, 1, 28, 28), np.float32))
        for what, outputs in {"probabilities": [tgrpc.InferRequestedOutput("probabilities")],
                              "classification of every class": [tgrpc.InferRequestedOutput("probabilities",
                                                                                         class_count=1000)],
                              f"probabilities named {repeats} times":
                                  [tgrpc.InferRequestedOutput("probabilities")] * repeats,
                              f"classification of every class named {repeats} times":
                                  [tgrpc.InferRequestedOutput("probabilities", class_count=1000)] * repeats,
                              }.items():
            try:
                response = grpc.infer("cnn", [x], outputs=outputs).get_response()
                found[f"gRPC {what}"] = ("OK", response.ByteSize(), None)
            except InferenceServerException as exc:
                found[f"gRPC {what}"] = (f"{exc.status()} ({(exc.message() or '')[:80]})", None, None)
        grpc.close()
        tracebacks = Path(server.log.name).read_text().count("Traceback")
        found["tracebacks in the log"] = (str(tracebacks), None, None)
        return found
    finally:
        server.stop()


def report_answers(new: Path, old: Path, models: Path, old_models: Path) -> None:
    mine, base = largest_answers(new, models), largest_answers(old, old_models)

    def said(found: tuple | None) -> str:
        status, size, _ = found or ("-", None, None)
        return status if size is None else f"{status}, {size} bytes"

    for what, (_, _, sent) in mine.items():
        request = f" (request {sent} bytes)" if sent else ""
        print(f"{what}{request}: {said(mine[what])}; baseline: {said(base.get(what))}")
    for protocol in ("HTTP", "gRPC"):
        largest = max(size for what, (status, size, _) in mine.items()
                      if what.startswith(protocol) and size is not None and status in ("200", "OK"))
        print(f"largest answer one request can make, {protocol}, default settings: {largest} bytes")
    print(f"[load {os.getloadavg()[0]:.2f}]")


# --- a gRPC flood under a small open-file limit ------------------------------------------------
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _healthz_probe_ms(port: int) -> float:
    """One /healthz on a new connection, as an orchestrator probes it; inf when it fails."""
    import http.client

    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
    except OSError:
        ok = False
    finally:
        conn.close()
    return (time.perf_counter() - started) * 1000 if ok else float("inf")


def grpc_flood(code: Path, models: Path, count: int = 600, nofile: int = 512,
               header_timeout_s: float = 10.0) -> dict:
    """`count` gRPC connections that send nothing (half) or only the HTTP/2 preface (half) to a
    server whose open-file limit is `nofile`: /healthz latency on new connections over the
    header timeout and 5 s more (median, max, failures), whether gRPC inference answered at any
    point, and after how long it answered again."""
    import tritonclient.grpc as tgrpc

    grpc_port = free_port()
    server = Server(code, models, {"WALDO_GRPC_PORT": str(grpc_port),
                                   "WALDO_HEADER_TIMEOUT_S": str(header_timeout_s)}, nofile=nofile)
    x = tgrpc.InferInput("input", [1, 1, 28, 28], "FP32")
    x.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))

    def infers() -> bool:
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")  # a new channel each time
        try:
            client.infer("cnn", [x], client_timeout=1)
            return True
        except Exception:
            return False
        finally:
            client.close()

    sockets = []
    try:
        before = infers()
        for i in range(count):
            try:
                sock = socket.create_connection(("127.0.0.1", grpc_port), timeout=5)
            except OSError:
                break
            if i % 2:
                sock.sendall(HTTP2_PREFACE)
            sockets.append(sock)
        flooded = time.monotonic()
        times, back_after = [], None
        while time.monotonic() - flooded < header_timeout_s + 5:
            times.append(_healthz_probe_ms(server.port))
            if back_after is None and infers():
                back_after = time.monotonic() - flooded
            time.sleep(0.2)
        answered = [t for t in times if t != float("inf")]
        return {"median": sorted(times)[len(times) // 2], "max": max(times), "probes": len(times),
                "failed": len(times) - len(answered), "opened": len(sockets), "infer before": before,
                "infer back after s": back_after}
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def report_grpc_flood(new: Path, old: Path, models: Path, old_models: Path) -> None:
    for label, code, repo in (("this code", new, models), ("baseline", old, old_models)):
        if not (code / "serving" / "v2" / "grpc.py").exists():
            print(f"{label}: no gRPC front end")
            continue
        found = grpc_flood(code, repo)
        back = found["infer back after s"]
        infer = "did not answer" if back is None else f"answered again after {back:.1f} s"
        print(f"{label}: /healthz with {found['opened']} idle and preface-only gRPC connections, open-file "
              f"limit 512: median {found['median']:.1f} ms, max {found['max']:.1f} ms over {found['probes']} "
              f"probes ({found['failed']} failed); gRPC inference {infer} (header timeout 10 s)   "
              f"[load {os.getloadavg()[0]:.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="a repository holding `cnn`")
    parser.add_argument("--baseline-rev", default="f0cc6aa", help="git revision to compare against")
    parser.add_argument("--idle", type=int, default=1000)
    scenarios = {"json-memory": report_json_memory, "answers": report_answers,
                 "grpc-flood": report_grpc_flood}
    parser.add_argument("--only", choices=sorted(scenarios), help="run this scenario alone")
    args = parser.parse_args()
    models = args.models.resolve()
    baseline = Path(tempfile.mkdtemp(prefix="waldo-baseline-"))
    baseline_models = compatible_copy(models, baseline.with_name(baseline.name + "-models"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.baseline_rev],
                   check=True, capture_output=True)
    try:
        if args.only:
            print(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores; "
                  f"baseline {args.baseline_rev}")
            scenarios[args.only](ROOT, baseline, models, baseline_models)
            return
        files = [big_png(i) for i in range(64)]
        print(f"64 PNGs of 4096x4096: {sum(map(len, files)) / 1e6:.1f} MB in all; load average "
              f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
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
        for report in scenarios.values():
            report(ROOT, baseline, models, baseline_models)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)],
                       capture_output=True)
        shutil.rmtree(baseline, ignore_errors=True)
        shutil.rmtree(baseline_models, ignore_errors=True)


if __name__ == "__main__":
    main()
