"""What a rollout costs the service: req/s, p50/p99 latency and CPU per request with one version,
a 10% canary and a 100% shadow, at concurrency 8 and 32, and the ratios against one version.

    .venv/bin/python bench/rollout.py                         # resnet18 at 32 px, ~3 min
    .venv/bin/python bench/rollout.py --duration 10 --repeats 2 --concurrency 8 32 64

One real `waldo serve` (uvicorn under httpapi.server) serves `bench-rollout@production` from a
local MLflow store (SQLite in a temporary folder), with the poll at 1 s. Versions 1 and 2 are
the same untrained network (`serving_peers.model.build_model`, as bench/serving_compare.py
builds it), registered through Waldo's publish; v1 holds the alias. Between scenarios the
registry's rollout policy is changed (serving.registry.policy), and the next scenario starts
once the service shows the new policy:

  one      no policy: v1 alone
  canary   v2 answers 10% of requests (unkeyed: at random)
  shadow   v2 also gets 100% of requests, after v1 answered; clients see v1 only

The load generator is bench/serving_peers/aiohttp_load.py (a separate process; the friendly API
with a PNG as base64 JSON). "cpu ms/req" is the CPU time of the server's processes over the
measured window per completed request. The policy's monitor bounds are raised for the bench
(p99 up to 60 s, 100x the primary's) so that a loaded machine does not roll the candidate back
mid-measurement; the script checks that the candidate was still active after each scenario.
`--repeats R` runs R rounds over the scenarios (order rotated) and keeps each scenario's best
round per concurrency. The load average is printed at the start and the end, and the ONNX
Runtime runs per answered request of each scenario (from /metrics), which is where a rollout's
cost comes from.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

NAME = "bench-rollout"
SCENARIOS = ("one", "canary", "shadow")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18", help="network to export untrained (default resnet18)")
    p.add_argument("--size", type=int, default=32, help="its input size in px (default 32)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    p.add_argument("--repeats", type=int, default=1, help="rounds over the scenarios; best kept")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    return p.parse_args()


def register(uri: str, version_dir: Path) -> None:
    """Versions 1 and 2 of NAME, both the files in `version_dir`; @production on v1."""
    import shutil

    from serving.registry.client import registry_client
    from serving.registry.moves import move_alias
    from training.export.publish import publish

    def write(version: int, folder: Path) -> Path:
        import json

        folder.mkdir(parents=True)
        shutil.copy(version_dir / "model.onnx", folder / "model.onnx")
        card = json.loads((version_dir / "modelcard.json").read_text())
        (folder / "modelcard.json").write_text(json.dumps({**card, "name": NAME, "version": str(version)}))
        return folder

    for _ in range(2):
        publish(uri, name=NAME, run_id=None, write=write)
    move_alias(registry_client(uri), NAME, "production", "1", action="publish", by="bench")


def apply(uri: str, scenario: str) -> None:
    """Set the registry's policy for `scenario` (or end the current one for `one`)."""
    from serving.registry.client import registry_client
    from serving.registry.policy import RolloutPolicy, end_policy, get_policy, set_policy

    client = registry_client(uri)
    if scenario == "one":
        current = get_policy(client, NAME)
        if current is not None and current.state == "active":
            end_policy(client, NAME, "production", by="bench", state="off", reason="bench: one version")
        return
    mode, percent = ("canary", 10) if scenario == "canary" else ("shadow", 100)
    set_policy(client, NAME, RolloutPolicy(candidate="2", mode=mode, percent=percent, max_p99_ms=60_000,
                                           max_p99_ratio=100), by="bench")


def shown(server) -> dict:
    import httpx

    return httpx.get(f"{server.http}/v1/models/{NAME}", timeout=10).json()


def counts(server) -> tuple[float, float]:
    """ONNX Runtime runs (every version's batches) and /v1 requests answered, from /metrics."""
    import httpx

    runs = answered = 0.0
    for line in httpx.get(f"{server.http}/metrics", timeout=10).text.splitlines():
        value = line.rpartition(" ")[2]
        if line.startswith("waldo_batch_size_count{"):
            runs += float(value)
        elif line.startswith("waldo_requests_total{") and 'protocol="v1",status="200"' in line:
            answered += float(value)
    return runs, answered


def wait_for(server, scenario: str, timeout: float = 60) -> None:
    """Until the service serves what `scenario` asks for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rollout = shown(server)["rollout"]
        version = rollout and rollout.get("version")
        mode = rollout and rollout.get("mode")
        if (scenario == "one" and version is None) or (version == "2" and mode == scenario):
            return
        time.sleep(0.25)
    raise RuntimeError(f"the service did not take up {scenario!r}: {shown(server)}")


def start_server(work: Path, uri: str, args) -> object:
    from serving_peers.process import Server, free_port, server_env

    port = free_port()
    env = server_env(args.threads, WALDO_MODELS=f"{NAME}@production", WALDO_TRACKING_URI=uri,
                     WALDO_PROVIDERS="CPUExecutionProvider", WALDO_INTRA_OP_THREADS=str(args.threads),
                     WALDO_INTER_OP_THREADS="1", WALDO_MAX_BATCH_SIZE=str(args.max_batch_size),
                     WALDO_MAX_DELAY_MS=str(args.max_delay_ms), WALDO_CACHE_DIR=str(work / "cache"),
                     WALDO_POLL_INTERVAL_S="1", MLFLOW_TRACKING_URI=uri)
    cmd = [sys.executable, "-c", "import sys; from serving.cli import main; sys.exit(main(sys.argv[1:]))",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    server = Server("waldo serve", cmd, env, f"http://127.0.0.1:{port}/readyz", work / "server.log", work)
    server.http = f"http://127.0.0.1:{port}"
    return server


def main() -> None:
    args = parse_args()
    from serving_peers import aiohttp_load
    from serving_peers.model import build_model, make_payloads

    load_start = os.getloadavg()
    results: dict[str, dict[int, dict]] = {s: {} for s in SCENARIOS}
    runs: dict[str, list[float]] = {s: [] for s in SCENARIOS}  # ORT runs per answered request
    with tempfile.TemporaryDirectory(prefix="waldo-bench-rollout-") as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        # MLflow resolves a new version's `models:/m-...` source through the process's tracking
        # URI, whichever client creates it.
        os.environ["MLFLOW_TRACKING_URI"] = uri
        version_dir = build_model(args.model, args.size, work / "export")
        register(uri, version_dir)
        body = make_payloads(version_dir, "image", None, work)["paths"]["friendly"]
        server = start_server(work, uri, args)
        server.start()
        try:
            for round_ in range(args.repeats):
                order = SCENARIOS[round_ % 3:] + SCENARIOS[:round_ % 3]
                for scenario in order:
                    apply(uri, scenario)
                    wait_for(server, scenario)
                    before = counts(server)
                    rows = aiohttp_load.run(server, f"{server.http}/v1/models/{NAME}/predict", body,
                                            SimpleNamespace(concurrency=args.concurrency,
                                                            duration=args.duration, warmup=args.warmup))
                    rollout = shown(server)["rollout"]
                    if scenario != "one" and not (rollout and rollout["active"]):
                        raise RuntimeError(f"the candidate was pulled during {scenario}: {rollout}")
                    after = counts(server)
                    runs[scenario].append((after[0] - before[0]) / max(after[1] - before[1], 1))
                    for row in rows:
                        best = results[scenario].get(row["concurrency"])
                        if best is None or row["rps"] > best["rps"]:
                            results[scenario][row["concurrency"]] = row
        finally:
            server.stop()
    report(results, args, load_start, os.getloadavg())
    print("ONNX Runtime runs per answered request (all levels, warm-up included; the candidate's "
          "share forms its own, smaller batches; a shadow runs every batch again):")
    print("  " + ", ".join(f"{s} {sum(r) / len(r):.3f}" for s, r in runs.items() if r))


def report(results: dict[str, dict[int, dict]], args, load_start, load_end) -> None:
    print(f"rollout cost: {args.model} at {args.size} px, {args.threads} ORT thread(s), batch <= "
          f"{args.max_batch_size}, {args.duration:g} s measured per level, best of {args.repeats}")
    print(f"load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}, "
          f"at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} ({os.cpu_count()} CPUs)")
    print(f"{'scenario':<8} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>10} "
          f"{'errors':>6}   {'req/s x':>7} {'p99 x':>6} {'cpu x':>6}")
    for scenario in SCENARIOS:
        for n, row in sorted(results[scenario].items()):
            base = results["one"].get(n)
            ratio = {key: row[key] / base[key] if base and base[key] else float("nan")
                     for key in ("rps", "p99", "cpu_ms")}
            print(f"{scenario:<8} {n:>4} {row['rps']:>8.1f} {row['p50']:>8.2f} {row['p99']:>8.2f} "
                  f"{row['cpu_ms']:>10.2f} {row['errors']:>6}   {ratio['rps']:>7.2f} {ratio['p99']:>6.2f} "
                  f"{ratio['cpu_ms']:>6.2f}")


if __name__ == "__main__":
    main()
