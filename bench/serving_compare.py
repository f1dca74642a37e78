"""Serving throughput and latency: Waldo's service against `mlflow models serve` and LitServe.

All servers serve the SAME ONNX file and run as real processes on 127.0.0.1, one at a time:

  (a) waldo       Waldo's service (`waldo serve`: uvicorn under serving.httpserver), dynamic batching
                  (max_batch_size 32, max_delay_ms 2: the defaults)
  (b) waldo-nb    the same with batching off (WALDO_MAX_BATCH_SIZE=1)
  (c) mlflow      `mlflow models serve --env-manager local --workers 1` of the file logged with
                  `mlflow.onnx.log_model(..., save_as_external_data=False)` into a temporary store
  (d) litserve    a LitAPI around an onnxruntime InferenceSession of the file, with the same
                  max_batch_size and batch_timeout as (a); decode + `serving.processing.preprocess`
                  in decode_request and `serving.processing.postprocess` in encode_response, so it
                  does the same work per request as (a)

Same thread budget everywhere: ONNX Runtime on the CPU provider with `--threads` intra-op
threads (default 1) and 1 inter-op thread, OMP_NUM_THREADS the same, one uvicorn process per
server (LitServe: one API-server process plus its one inference worker).

Payload (`--payload`):
  image   (default) the same PNG, base64 in Waldo's JSON `{"instances": [{"b64": ...}]}`, to
          (a), (b) and (d), which decode and preprocess it; (c) cannot decode images, so it gets
          the equivalent preprocessed tensor as `{"inputs": [[C][H][W] floats]}` (a bigger body
          that is parsed as JSON numbers: this is what serving that model with MLflow costs).
  tensor  the preprocessed tensor as JSON to all four: `{"instances": [tensor]}` to (a), (b),
          (d) and `{"inputs": [tensor]}` to (c). Same numbers, same parsing work everywhere.

The load generator is a separate process (asyncio + aiohttp, up to N keep-alive
connections): for each concurrency N, N workers send requests back to back, first for `--warmup`
seconds (not counted), then for `--duration` seconds. Throughput = requests completed inside the
measured window / its length; latency percentiles over the requests started inside it. The
"cpu ms/req" column is the CPU time of all the server's processes over that window per completed
request: on a shared 2-core machine it moves far less with other load than req/s and latency do.
`--repeats R` runs R rounds over the servers (order rotated) and keeps, per server and
concurrency, the round with the highest throughput.

Why resnet18 at 32 px by default: ORT takes ~1.3 ms for one image and ~0.9 ms per image in a
batch of 32 on one thread here, comparable to the per-request HTTP + Python cost, so both the
batching and the request path show. cnn or lenet5 at 28 px take 0.03-0.05 ms per image: with
them the benchmark measures the HTTP stacks only.

    .venv/bin/python bench/serving_compare.py                          # resnet18 at 32 px, all four
    .venv/bin/python bench/serving_compare.py --model lenet5 --only a c --duration 3
    .venv/bin/python bench/serving_compare.py --model-dir models/cnn/1 --payload tensor
    .venv/bin/python bench/serving_compare.py --repeats 2                 # steadier on a busy box

The weights do not matter for speed, so without `--model-dir` an untrained network is exported
(`training.export.parity.export_checked` + `write_version`, as `waldo export` lays it out).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERVERS = {
    "a": "waldo (batching)",
    "b": "waldo (no batching)",
    "c": "mlflow models serve",
    "d": "litserve (batching)",
}
MAX_PIXELS = 4096 * 4096  # Waldo's default max_image_pixels


# --- the model -------------------------------------------------------------------------------
def build_model(name: str, size: int, out: Path) -> Path:
    """Export an untrained classifier (10 classes) at `size` px into `out`; return its version folder."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from training.export.card import build_card, output_names
    from training.export.layout import write_version
    from training.export.parity import export_checked
    from training.export.source import CheckpointRecord
    from training.models import get_model_info
    from training.tasks import ClassificationTask

    torch.manual_seed(0)
    channels = get_model_info(name).default_input[0]
    task = ClassificationTask(model_name=name, num_classes=10, in_channels=channels,
                              image_size=size).eval()
    exported = export_checked(task.net, (channels, size, size), output_names=output_names("classify"))
    record = CheckpointRecord(task="classify", hparams=dict(task.hparams))
    path, _ = write_version(exported.model, lambda v: build_card(record, name=name, version=v,
                                                                 opset=18), output=out, name=name)
    return path


def make_payloads(model_dir: Path, kind: str, image_px: int | None) -> dict[str, bytes]:
    """The request bodies: 'waldo' (also LitServe's) and 'mlflow', for the same image."""
    import numpy as np
    from PIL import Image

    from serving.processing import preprocess
    from serving.repository import load_card

    card = load_card(model_dir / "modelcard.json")
    spec = card.input
    rng = np.random.default_rng(0)
    w = h = image_px or spec.width
    mode = "L" if spec.channels == 1 else "RGB"
    shape = (h, w) if mode == "L" else (h, w, 3)
    # A smooth gradient plus noise: compresses like a photo, not like pure noise.
    base = np.add.outer(np.linspace(0, 160, h), np.linspace(0, 80, w))
    base = base if mode == "L" else base[..., None] + np.array([0, 40, 80])
    pixels = np.clip(base + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG")
    png = buf.getvalue()
    tensor = preprocess(card, Image.open(io.BytesIO(png))).tolist()  # (C, H, W)
    mlflow_body = json.dumps({"inputs": [tensor]}).encode()
    if kind == "image":
        waldo_body = json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]}).encode()
    else:
        waldo_body = json.dumps({"instances": [tensor]}).encode()
    return {"waldo": waldo_body, "mlflow": mlflow_body, "png_bytes": str(len(png)).encode()}


def log_to_mlflow(model_file: Path, work: Path, threads: int) -> tuple[str, str]:
    """Log the ONNX file into a temporary MLflow store; return (model URI, tracking URI)."""
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    import mlflow

    for logger in ("mlflow", "alembic"):  # mlflow configures its loggers on import
        logging.getLogger(logger).setLevel(logging.ERROR)
    import numpy as np
    import onnx
    from mlflow.models import infer_signature

    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("serving-compare",
                                          artifact_location=(work / "artifacts").as_uri())
    model = onnx.load(str(model_file))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    signature = infer_signature(np.zeros((1, *dims), np.float32))
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.onnx.log_model(
            model, name="model", signature=signature, save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
            onnx_session_options={"intra_op_num_threads": threads, "inter_op_num_threads": 1},
        )
    return info.model_uri, uri


# --- servers ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, key: str, cmd: list[str], env: dict[str, str], health: str, predict: str,
                 body: bytes, log: Path, cwd: Path):
        self.key, self.cmd, self.env, self.health, self.predict = key, cmd, env, health, predict
        self.body, self.log, self.cwd = body, log, cwd
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> float:
        import httpx

        started = time.perf_counter()
        with open(self.log, "wb") as log:
            # Own process group, so that stop() also ends what it spawned (mlflow -> uvicorn,
            # LitServe -> its API server and inference worker).
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{SERVERS[self.key]} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(self.health, timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{SERVERS[self.key]} not healthy after {timeout} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        except ProcessLookupError:
            pass

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def server_env(threads: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WALDO_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
               # `mlflow models serve` runs `uvicorn` from PATH: the one beside this interpreter
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    env.update(extra)
    return env


def make_server(key: str, args, model_dir: Path, repo: Path, name: str, mlflow_model: tuple | None,
                payloads: dict[str, bytes], work: Path) -> Server:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    py = sys.executable
    log = work / f"server-{key}.log"
    if key in ("a", "b"):
        env = server_env(args.threads, WALDO_MODELS=str(repo), WALDO_PROVIDERS="CPUExecutionProvider",
                         WALDO_INTRA_OP_THREADS=str(args.threads), WALDO_INTER_OP_THREADS="1",
                         WALDO_MAX_BATCH_SIZE=str(args.max_batch_size if key == "a" else 1),
                         WALDO_MAX_DELAY_MS=str(args.max_delay_ms),
                         WALDO_CACHE_DIR=str(work / "cache"))
        # `waldo serve` (uvicorn under serving.httpserver's connection guard), from this
        # checkout or from --waldo-code (e.g. a git worktree of an earlier revision).
        code = Path(args.waldo_code).resolve() if args.waldo_code else ROOT
        env["PYTHONPATH"] = str(code)
        cmd = [py, "-c", "import sys; from serving.cli import main; sys.exit(main(sys.argv[1:]))",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        return Server(key, cmd, env, f"{base}/readyz", f"{base}/v1/models/{name}/predict",
                      payloads["waldo"], log, code)
    if key == "c":
        model_uri, tracking_uri = mlflow_model
        env = server_env(args.threads, MLFLOW_TRACKING_URI=tracking_uri)
        mlflow_cli = Path(py).with_name("mlflow")
        cmd = [str(mlflow_cli), "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        return Server(key, cmd, env, f"{base}/ping", f"{base}/invocations", payloads["mlflow"],
                      log, work)
    cmd = [py, str(Path(__file__).resolve()), "_litserve", "--model-dir", str(model_dir),
           "--port", str(port), "--threads", str(args.threads),
           "--max-batch-size", str(args.max_batch_size), "--max-delay-ms", str(args.max_delay_ms)]
    env = server_env(args.threads, **{LITSERVE_ROLE: "1"})
    return Server(key, cmd, env, f"{base}/health", f"{base}/predict", payloads["waldo"], log, work)


# --- (d): the LitServe server, run as `serving_compare.py _litserve ...` ----------------------
# LitServe starts its inference worker with multiprocessing "spawn", which pickles the LitAPI and
# re-imports this file in the child: the class must live at module level. It is defined only in
# that server's processes (marked by this variable), so the benchmark itself never imports
# litserve.
LITSERVE_ROLE = "SERVING_COMPARE_LITSERVE"

if os.environ.get(LITSERVE_ROLE) == "1":
    import litserve as ls
    import numpy as np

    class OnnxAPI(ls.LitAPI):
        """The same per-request work as Waldo's predict route: decode + preprocess (or check a
        tensor) per request, one ORT run per batch, softmax + top-5 per image."""

        def __init__(self, model_dir: str, threads: int, **kwargs):
            super().__init__(**kwargs)
            self.model_dir, self.threads = Path(model_dir), threads

        def setup(self, device):
            import onnxruntime as ort

            from serving.repository import load_card

            self.card = load_card(self.model_dir / "modelcard.json")
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(self.model_dir / "model.onnx"), options,
                                                providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
            spec = self.card.input
            self.shape = (spec.channels, spec.height, spec.width)

        def decode_request(self, request):
            from serving.inputs import decode_image
            from serving.processing import preprocess

            item = request["instances"][0]
            if isinstance(item, dict):
                image = decode_image(base64.b64decode(item["b64"], validate=True), "instances[0]",
                                     MAX_PIXELS)
                return preprocess(self.card, image), image.size
            x = np.asarray(item, dtype=np.float32)
            if x.shape != self.shape or not np.isfinite(x).all():
                raise ValueError(f"bad tensor {x.shape}")
            return x, (self.shape[2], self.shape[1])

        def batch(self, inputs):
            return np.stack([x for x, _ in inputs]), [size for _, size in inputs]

        def predict(self, x):
            if isinstance(x[1], list):  # batched: (B, C, H, W), [sizes]
                batch, sizes = x
            else:  # max_batch_size 1: one decoded request
                batch, sizes = x[0][None], [x[1]]
            (out,) = self.session.run(None, {self.input_name: batch})
            return np.asarray(out, dtype=np.float32), sizes

        def unbatch(self, output):
            out, sizes = output
            return [(out[i:i + 1], [sizes[i]]) for i in range(len(out))]

        def encode_response(self, output):
            from serving.processing import postprocess

            out, sizes = output
            return {"predictions": postprocess(self.card, out, sizes, top_k=5)}


def run_litserve(argv: list[str]) -> None:
    import litserve as ls

    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    args = p.parse_args(argv)
    api = OnnxAPI(args.model_dir, args.threads, max_batch_size=args.max_batch_size,
                  batch_timeout=args.max_delay_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=30)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning",
               generate_client_file=False)


# --- the load generator, run as `serving_compare.py _loadgen URL BODY_FILE ...` --------------
# aiohttp, not httpx: on this 2-core box an httpx AsyncClient tops out near 700 req/s against a
# trivial FastAPI endpoint and collapses to 60-140 req/s at 64 concurrent requests (its
# connection pool), so it, not the servers, would set the numbers; aiohttp keeps 2,000+ req/s at
# 1-64. httpx remains the fallback when aiohttp is not installed.
def run_loadgen(argv: list[str]) -> None:
    import numpy as np

    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("body", type=Path)
    p.add_argument("--concurrency", type=int, nargs="+", required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--warmup", type=float, required=True)
    args = p.parse_args(argv)
    body = args.body.read_bytes()
    headers = {"content-type": "application/json"}

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

    async def main():
        for n in args.concurrency:
            print(json.dumps(await level(n)), flush=True)

    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group `pgid` (Linux /proc)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # pgrp; fields[11], [12]: utime, stime
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def load(server: Server, body_file: Path, args) -> list[dict]:
    """Run the load generator against `server`; add the server's CPU time per request, taken
    over each measured window (all its processes: mlflow's and LitServe's children too)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "_loadgen", server.predict, str(body_file),
           "--concurrency", *map(str, args.concurrency), "--duration", str(args.duration),
           "--warmup", str(args.warmup)]
    gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rows, marks = [], []
    for line in gen.stdout:
        if line.startswith("mark"):
            marks.append(group_cpu_seconds(server.proc.pid))
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


def top_label(key: str, body: dict) -> str:
    """The predicted class from each server's response, for the sanity check."""
    if key == "c":
        preds = body["predictions"]
        row = next(iter(preds.values()))[0] if isinstance(preds, dict) else preds[0]
        row = row["logits"] if isinstance(row, dict) else row
        return str(max(range(len(row)), key=row.__getitem__))
    return body["predictions"][0]["label"]


# --- main ------------------------------------------------------------------------------------
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_litserve":
        return run_litserve(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        return run_loadgen(sys.argv[2:])

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path,
                        help="a repository version folder (model.onnx + modelcard.json); default: "
                             "export an untrained --model at --size")
    parser.add_argument("--model", default="resnet18",
                        help="network to export when no --model-dir (cnn, lenet5, resnet18, ...)")
    parser.add_argument("--size", type=int, default=32, help="input side in px for --model")
    parser.add_argument("--payload", choices=["image", "tensor"], default="image")
    parser.add_argument("--image-px", type=int,
                        help="side of the PNG sent (default: the model's input size, no resize)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per level")
    parser.add_argument("--only", nargs="+", choices=list(SERVERS), default=list(SERVERS))
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over all servers (order rotated); the best round is shown")
    parser.add_argument("--threads", type=int, default=1,
                        help="ORT intra-op threads (and OMP_NUM_THREADS) in every server")
    parser.add_argument("--waldo-code", help="run (a) and (b) from this checkout (default: this one)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="for (a) and (d)")
    parser.add_argument("--max-delay-ms", type=float, default=2.0,
                        help="(a)'s max_delay_ms and (d)'s batch_timeout")
    args = parser.parse_args()

    import httpx

    work = Path(tempfile.mkdtemp(prefix="serving-compare-"))
    servers: list[Server] = []
    try:
        t0 = time.perf_counter()
        if args.model_dir is None:
            model_dir = build_model(args.model, args.size, work / "built")
            what = f"untrained {args.model} at {args.size} px (exported here)"
        else:
            model_dir = args.model_dir.resolve()
            what = str(args.model_dir)
        from serving.repository import load_card

        card = load_card(model_dir / "modelcard.json")
        name = card.name
        repo = work / "repo"  # Waldo serves a repository root: link the one version into it
        (repo / name).mkdir(parents=True)
        (repo / name / "1").symlink_to(model_dir, target_is_directory=True)
        payloads = make_payloads(model_dir, args.payload, args.image_px)
        for kind in ("waldo", "mlflow"):
            (work / f"body-{kind}.json").write_bytes(payloads[kind])
        mlflow_model = None
        if "c" in args.only:
            mlflow_model = log_to_mlflow(model_dir / "model.onnx", work, args.threads)
        prep_s = time.perf_counter() - t0

        import onnxruntime

        spec = card.input
        print(f"# serving_compare: {what}; input {spec.channels}x{spec.height}x{spec.width}, "
              f"model.onnx {(model_dir / 'model.onnx').stat().st_size / 1e6:.1f} MB")
        print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
              f"onnxruntime {onnxruntime.__version__}; prepared in {prep_s:.1f} s")
        print(f"# same thread budget for every server: ORT CPU provider, intra_op_threads="
              f"{args.threads}, inter_op_threads=1, OMP_NUM_THREADS={args.threads}, one uvicorn "
              "process (LitServe: 1 API server + 1 inference worker); servers run one at a time")
        print(f"# batching (a) and (d): max_batch_size {args.max_batch_size}, delay "
              f"{args.max_delay_ms} ms; (b): WALDO_MAX_BATCH_SIZE=1")
        if args.payload == "image":
            print(f"# payload: the same {int(payloads['png_bytes'])}-byte PNG as JSON b64 to (a) (b) (d) "
                  f"({len(payloads['waldo'])} B body; they decode + preprocess it); (c) cannot "
                  f"decode images, so it gets the equivalent preprocessed tensor "
                  f"({len(payloads['mlflow'])} B JSON)")
        else:
            print(f"# payload: the same preprocessed tensor as JSON to all four ({len(payloads['waldo'])} "
                  f"B as instances for (a) (b) (d), {len(payloads['mlflow'])} B as inputs for (c))")
        print(f"# load: separate process, asyncio + aiohttp (httpx if absent), N workers back to "
              f"back; {args.warmup} s warm-up + {args.duration} s measured per level")
        sys.stdout.flush()

        rounds: dict[str, list[list[dict]]] = {key: [] for key in args.only}
        labels: dict[str, str] = {}
        for round_ in range(args.repeats):
            # Rotate the order from one round to the next, so no server always goes first.
            order = args.only[round_ % len(args.only):] + args.only[:round_ % len(args.only)]
            for key in order:
                server = make_server(key, args, model_dir, repo, name, mlflow_model, payloads, work)
                servers.append(server)
                try:
                    startup = server.start()
                    r = httpx.post(server.predict, content=server.body,
                                   headers={"content-type": "application/json"}, timeout=60)
                    if r.status_code != 200:
                        raise RuntimeError(f"{SERVERS[key]}: HTTP {r.status_code} {r.text[:500]}")
                    labels[key] = top_label(key, r.json())
                    body_file = work / f"body-{'mlflow' if key == 'c' else 'waldo'}.json"
                    rounds[key].append(load(server, body_file, args))
                except Exception as exc:  # report it and go on with the next server
                    print(f"# ({key}) {SERVERS[key]} FAILED: {exc}\n{server.tail()}", flush=True)
                    continue
                finally:
                    server.stop()
                print(f"# ({key}) {SERVERS[key]}: up in {startup:.1f} s, predicted label "
                      f"{labels[key]}" + (f" (round {round_ + 1})" if args.repeats > 1 else ""),
                      flush=True)
        # Per server and concurrency, the round with the highest throughput (a busy machine
        # only ever makes a server slower).
        results = {}
        for key, runs in rounds.items():
            if runs:
                levels = {}
                for run in runs:
                    for row in run:
                        best = levels.get(row["concurrency"])
                        if best is None or row["rps"] > best["rps"]:
                            levels[row["concurrency"]] = row
                results[key] = [levels[n] for n in sorted(levels)]
        report(results, labels, args)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict[str, list[dict]], labels: dict[str, str], args) -> None:
    print()
    if args.repeats > 1:
        print(f"# best of {args.repeats} rounds per server and concurrency (highest req/s)")
    header = (f"{'server':24s} {'conc':>5s} {'req/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s} "
              f"{'requests':>9s} {'errors':>7s} {'cpu ms/req':>11s} {'load':>6s}")
    print(header)
    print("-" * len(header))
    for key, rows in results.items():
        for row in rows:
            print(f"({key}) {SERVERS[key]:20s} {row['concurrency']:5d} {row['rps']:9.1f} "
                  f"{row['p50']:9.2f} {row['p99']:9.2f} {row['count']:9d} {row['errors']:7d} "
                  f"{row['cpu_ms']:11.2f} {row['load']:6.2f}")
            if row["errors"]:
                print(f"    first error: {row['first_error']}")
    print("# cpu ms/req: CPU time of all the server's processes over the measured window, per "
          "completed request (less sensitive to other load than req/s); load: 1-min load average")
    if len(set(labels.values())) > 1:
        print(f"# WARNING: the servers disagree on the label: {labels}")

    if "a" not in results:
        return
    by = {k: {r["concurrency"]: r for r in rows} for k, rows in results.items()}
    others = [k for k in ("b", "c", "d") if k in by]
    print()
    print("ratios: throughput (a)/(x) (above 1: (a) serves more), p99 (a)/(x) (below 1: (a) is faster)")
    for n in args.concurrency:
        a = by["a"].get(n)
        if a is None:
            continue
        parts = []
        for k in others:
            x = by[k].get(n)
            if x and x["rps"] > 0 and x["p99"] > 0:
                parts.append(f"(a)/({k}) thr {a['rps'] / x['rps']:.2f}x p99 {a['p99'] / x['p99']:.2f}x")
        print(f"  conc {n:3d}: " + "; ".join(parts))
    rivals = [k for k in ("c", "d") if k in by]
    if not rivals:
        return
    print()
    print("target: at concurrency >= 8, (a) has higher throughput than (c) and (d) and a lower p99")
    verdicts = []
    for n in [n for n in args.concurrency if n >= 8]:
        a = by["a"].get(n)
        fails = []
        for k in rivals:
            x = by[k].get(n)
            if a is None or x is None:
                continue
            if a["errors"] or not a["rps"] > x["rps"]:
                fails.append(f"throughput vs ({k})")
            if not a["p99"] < x["p99"]:
                fails.append(f"p99 vs ({k})")
        verdicts.append(not fails)
        print(f"  conc {n:3d}: {'holds' if not fails else 'FAILS: ' + ', '.join(fails)}")
    print(f"  overall: {'HOLDS' if verdicts and all(verdicts) else 'DOES NOT HOLD'} "
          f"(against {', '.join(f'({k})' for k in rivals)})")


if __name__ == "__main__":
    main()
