"""Serving throughput and latency: Waldo against Triton, KServe, Ray Serve, BentoML, LitServe and
`mlflow models serve`, all serving the SAME ONNX file in the same run.

Every server is a real process (group) on 127.0.0.1, one at a time; the peers live in
`bench/serving_peers/` (one module each) and run in their own venvs under `.bench-venvs/`, made
by `bench/serving_peers/setup.sh`. Rows (`--only` takes row names, peer names, or a b c d):

  row               server, front end                                   load generator
  waldo        (a)  `waldo serve`, friendly API /v1/models/m/predict    aiohttp
  waldo-v2          the same server, Open Inference Protocol HTTP       perf_analyzer (HTTP)
  waldo-grpc        the same server, v2 gRPC (--grpc-port)              perf_analyzer (gRPC)
  waldo-v2-aiohttp  the same server, v2 HTTP JSON                       aiohttp (to compare the
                                                                        two generators)
  waldo-nb     (b)  `waldo serve` with WALDO_MAX_BATCH_SIZE=1           aiohttp
  triton            pytriton 0.7: the real tritonserver (C++ HTTP/gRPC  perf_analyzer (HTTP)
  triton-grpc       front ends, dynamic batcher) + a Python model       perf_analyzer (gRPC)
                    around the ORT session
  kserve            KServe 0.21 Python ModelServer, v2 HTTP JSON        aiohttp (perf_analyzer
                    (its gRPC server runs too, but perf_analyzer cannot  needs Triton's model-
                    load it: it asks for ModelConfig, "Method not found") config extension)
  rayserve          Ray Serve 2.60, one replica, @serve.batch           aiohttp
  bentoml           BentoML 1.4 service, adaptive batching              aiohttp
  litserve     (d)  LitServe LitAPI with batching                       aiohttp
  mlflow       (c)  `mlflow models serve --env-manager local            aiohttp
                    --workers 1` of the file logged by mlflow.onnx

Same model work everywhere: ONNX Runtime on the CPU provider with `--threads` intra-op threads
(default 1) and 1 inter-op thread, OMP_NUM_THREADS the same, one model instance. Peers that
decode images decode the PNG and run `serving.processing.preprocess` from the ModelCard, like
Waldo. Batching where the peer has it: max batch `--max-batch-size` (32), delay
`--max-delay-ms` (2 ms; Triton's max_queue_delay, Ray's batch_wait_timeout_s, LitServe's
batch_timeout; BentoML's adaptive batcher takes only a latency bound, max_latency_ms, and picks
its own wait). KServe's Python server and `mlflow models serve` have no batching. Each peer
module's docstring says which processes it runs (Ray: GCS, raylet, proxy, controller,
replica; Triton: pytriton's process, tritonserver and a Python-backend stub).

Payload (`--payload`):
  image   (default) the same PNG: base64 in `{"instances": [{"b64": ...}]}` to the friendly
          rows (Waldo, Ray Serve, BentoML, LitServe), as BYTES `image` (binary, length-prefixed) from
          perf_analyzer to the v2 rows, base64 in v2 JSON to waldo-v2-aiohttp; all of them decode
          and preprocess it. mlflow cannot decode images: it gets the preprocessed tensor as
          `{"inputs": [[C][H][W] floats]}` (a bigger body parsed as JSON numbers).
  tensor  the preprocessed tensor: JSON to the aiohttp rows, FP32 `input` from perf_analyzer.

The two load generators are not the same client, so compare rows of one generator first:
  aiohttp        a separate asyncio process, N workers send back to back over up to N
                 keep-alive connections; `--warmup` s unmeasured, then `--duration` s measured.
                 Throughput = requests completed in the window / its length; p50/p99 over the
                 requests started in it.
  perf_analyzer  Triton's C++ client (scripts/perf_analyzer.sh), N synchronous slots, batch 1;
                 a `--warmup` run, then windows of duration/3 (by default the first three; with
                 `--pa-stability` S, until three agree within S %, at most `--pa-max-trials`);
                 figures over the last three. See serving_peers/perf_analyzer.py.
"cpu ms/req": the CPU time of all the server's processes (its session) over the measured
window (perf_analyzer: its whole run) per completed request. On a shared 2-core machine it
moves far less with other load than req/s and latency do: read it first.
`--repeats R` runs R rounds over the servers (order rotated) and keeps, per row and
concurrency, the round with the highest throughput.

Why resnet18 at 32 px by default: ORT takes ~1.3 ms for one image and ~0.9 ms per image in a
batch of 32 on one thread here, comparable to the per-request HTTP + Python cost, so both the
batching and the request path show. cnn or lenet5 at 28 px take 0.03-0.05 ms per image: with
them the benchmark measures the HTTP stacks only.

    bench/serving_peers/setup.sh                                       # the peers' venvs, once
    .venv/bin/python bench/serving_compare.py                          # every row, ~10 min
    .venv/bin/python bench/serving_compare.py --only waldo triton --duration 2 --concurrency 8
    .venv/bin/python bench/serving_compare.py --model-dir models/cnn/1 --payload tensor

The weights do not matter for speed, so without `--model-dir` an untrained network is exported
(`training.export.parity.export_checked` + `write_version`, as `waldo export` lays it out).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serving_peers import ALIASES, PEERS, ROWS  # noqa: E402


def parse_args() -> argparse.Namespace:
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
    choices = [*ROWS, *(p.name for p in PEERS if p.name not in ROWS), *ALIASES]
    parser.add_argument("--only", nargs="+", choices=choices, metavar="ROW",
                        help=f"rows or peers to run (default: all): {', '.join(choices)}")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over all servers (order rotated); the best round is shown")
    parser.add_argument("--threads", type=int, default=1,
                        help="ORT intra-op threads (and OMP_NUM_THREADS) in every server")
    parser.add_argument("--waldo-code", help="run Waldo from this checkout (default: this one; it "
                        "must know `waldo serve --grpc-port`)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="for every batching server")
    parser.add_argument("--max-delay-ms", type=float, default=2.0,
                        help="batch delay: Waldo's max_delay_ms and the peers' equivalents")
    parser.add_argument("--pa-stability", type=float, default=999,
                        help="perf_analyzer -s: windows agree within this %% (default: any 3)")
    parser.add_argument("--pa-max-trials", type=int, default=6, help="perf_analyzer -r")
    args = parser.parse_args()
    wanted = set()
    for name in args.only or list(ROWS):
        name = ALIASES.get(name, name)
        wanted |= {name} if name in ROWS else {f.row for p in PEERS if p.name == name for f in p.fronts}
    args.rows = [row for row in ROWS if row in wanted]  # in table order
    return args


def prepare(args, work: Path) -> SimpleNamespace:
    """The model (built or given), Waldo's repository folder and the request bodies."""
    from serving_peers.model import build_model, make_payloads

    from serving.repository import load_card

    if args.model_dir is None:
        model_dir = build_model(args.model, args.size, work / "built")
        what = f"untrained {args.model} at {args.size} px (exported here)"
    else:
        model_dir, what = args.model_dir.resolve(), str(args.model_dir)
    card = load_card(model_dir / "modelcard.json")
    repo = work / "repo"  # Waldo serves a repository root: link the one version into it
    (repo / card.name).mkdir(parents=True)
    (repo / card.name / "1").symlink_to(model_dir, target_is_directory=True)
    payloads = make_payloads(model_dir, args.payload, args.image_px, work)
    return SimpleNamespace(args=args, model_dir=model_dir, what=what, card=card, name=card.name,
                           repo=repo, work=work, payloads=payloads)


def load_front(ctx, server, front) -> list[dict]:
    from serving_peers import aiohttp_load, perf_analyzer

    args = ctx.args
    if front.load == "perf_analyzer":
        grpc = front.protocol == "v2-grpc"
        address = server.grpc if grpc else server.http.removeprefix("http://")
        return perf_analyzer.run(server, ctx.name, address, "grpc" if grpc else "http",
                                 ctx.payloads["paths"]["pa"], args)
    url = server.http + front.path.format(model=ctx.name)
    return aiohttp_load.run(server, url, ctx.payloads["paths"][front.body], args)


def run_peer(ctx, peer, rows: list[str], results: dict, labels: dict, skipped: dict) -> None:
    """Start one peer, check and load each of its selected front ends, stop it."""
    from serving_peers.checks import top_label

    impl = peer.impl()
    reason = impl.check(ctx, peer)
    if reason:
        for row in rows:
            skipped[row] = reason
        print(f"# {peer.title}: not run: {reason}", flush=True)
        return
    server = None
    try:
        server = impl.launch(ctx, peer)
        ctx.servers.append(server)
        startup = server.start()
        print(f"# {peer.title}: up in {startup:.1f} s", flush=True)
        for row in rows:
            _, front = ROWS[row]
            try:
                labels[row] = top_label(ctx, server, front)
                levels = load_front(ctx, server, front)
                results.setdefault(row, []).append(levels)
                print(f"#   {row}: label {labels[row]}, done", flush=True)
            except Exception as exc:  # report it and go on with the next front end
                skipped.setdefault(row, f"failed: {str(exc).strip().splitlines()[-1][:200]}")
                print(f"#   {row} FAILED: {exc}", flush=True)
    except Exception as exc:
        for row in rows:
            skipped.setdefault(row, f"failed to start: {str(exc).strip().splitlines()[0][:200]}")
        print(f"# {peer.title} FAILED: {exc}", flush=True)
    finally:
        if server is not None:
            server.stop()


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="serving-compare-"))
    ctx = None
    load_before = os.getloadavg()
    try:
        t0 = time.perf_counter()
        ctx = prepare(args, work)
        ctx.servers = []
        header(ctx, time.perf_counter() - t0, load_before)
        peers = [p for p in PEERS if any(f.row in args.rows for f in p.fronts)]
        results: dict[str, list[list[dict]]] = {}
        labels: dict[str, str] = {}
        skipped: dict[str, str] = {}
        for round_ in range(args.repeats):
            # Rotate the order from one round to the next, so no server always goes first.
            k = round_ % len(peers)
            for peer in peers[k:] + peers[:k]:
                rows = [f.row for f in peer.fronts if f.row in args.rows]
                run_peer(ctx, peer, rows, results, labels, skipped)
        best = {row: best_levels(runs) for row, runs in results.items()}
        from serving_peers.report import report

        report(best, labels, skipped, args, load_before, os.getloadavg())
    finally:
        for server in getattr(ctx, "servers", []):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def best_levels(runs: list[list[dict]]) -> dict[int, dict]:
    """Per concurrency, the round with the highest throughput (other load only slows a server)."""
    levels: dict[int, dict] = {}
    for run in runs:
        for row in run:
            old = levels.get(row["concurrency"])
            if old is None or row["rps"] > old["rps"] or math.isnan(old["rps"]):
                levels[row["concurrency"]] = row
    return levels


def header(ctx, prep_s: float, load: tuple) -> None:
    import onnxruntime

    args, spec, sizes = ctx.args, ctx.card.input, ctx.payloads["sizes"]
    print(f"# serving_compare: {ctx.what}; input {spec.channels}x{spec.height}x{spec.width}, "
          f"model.onnx {(ctx.model_dir / 'model.onnx').stat().st_size / 1e6:.1f} MB")
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; onnxruntime {onnxruntime.__version__} (peers: their venv's, same "
          f"version); prepared in {prep_s:.1f} s")
    print(f"# every server: ORT CPU provider, intra_op_threads={args.threads}, inter_op_threads=1, "
          f"OMP_NUM_THREADS={args.threads}, one model instance; one server at a time")
    print(f"# batching: max batch {args.max_batch_size}, delay {args.max_delay_ms} ms where the peer "
          "has it; " + "; ".join(f"{p.name}: {p.batching}" for p in PEERS
                                 if any(f.row in args.rows for f in p.fronts)))
    if args.payload == "image":
        print(f"# payload: the same {ctx.payloads['png_bytes']}-byte PNG (friendly JSON "
              f"{sizes['friendly']} B, v2 JSON {sizes['v2']} B, perf_analyzer BYTES); mlflow gets "
              f"the preprocessed tensor ({sizes['mlflow']} B JSON)")
    else:
        print(f"# payload: the preprocessed tensor (friendly JSON {sizes['friendly']} B, mlflow "
              f"{sizes['mlflow']} B, v2 JSON {sizes['v2']} B, perf_analyzer FP32 input)")
    print(f"# load: aiohttp {args.warmup} s warm-up + {args.duration} s per level; perf_analyzer "
          f"windows of {max(200, int(args.duration * 1000 / 3))} ms, -s {args.pa_stability} "
          f"-r {args.pa_max_trials}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
