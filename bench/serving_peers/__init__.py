"""The servers that bench/serving_compare.py runs, one small module per peer.

A peer is one server process (its venv, command line, health URL) with one or more front ends;
each front end is one row of the table: how it is loaded (aiohttp or perf_analyzer), with which
body, and how its answer gives the top label for the sanity check. The peers' server-side code
(the `serve` functions and service classes) runs inside the peer's own venv
(.bench-venvs/<venv>/, made by setup.sh) and imports only `serving_peers.peer_model` from here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

# Row name aliases kept from the four-server version of the benchmark.
ALIASES = {"a": "waldo", "b": "waldo-nb", "c": "mlflow", "d": "litserve"}


@dataclass
class Front:
    row: str            # the name in --only and in the table
    title: str
    protocol: str       # friendly | mlflow | v2-http | v2-grpc
    load: str           # aiohttp | perf_analyzer
    path: str = ""      # HTTP path, formatted with model=...
    body: str = "friendly"  # which body aiohttp sends (see model.make_payloads)
    answer: str = "friendly"  # how the sanity check reads the answer: friendly | mlflow | v2 | list


@dataclass
class Peer:
    name: str
    title: str
    module: str         # serving_peers.<module> has launch(ctx) -> Server and check(ctx) -> str | None
    fronts: list[Front] = field(default_factory=list)
    venv: str | None = None  # .bench-venvs/<venv>, or None for the project's .venv
    batching: str = ""   # how it batches, for the header

    def impl(self):
        return importlib.import_module(f"serving_peers.{self.module}")


def _peers() -> list[Peer]:
    v2 = "/v2/models/{model}/infer"
    return [
        Peer("waldo", "Waldo", "waldo", [
            Front("waldo", "waldo friendly API", "friendly", "aiohttp", "/v1/models/{model}/predict"),
            Front("waldo-v2", "waldo v2 HTTP", "v2-http", "perf_analyzer"),
            Front("waldo-grpc", "waldo v2 gRPC", "v2-grpc", "perf_analyzer"),
            Front("waldo-v2-aiohttp", "waldo v2 HTTP (aiohttp)", "v2-http", "aiohttp", v2, "v2", "v2"),
        ], batching="dynamic: max_batch_size, max_delay_ms"),
        Peer("waldo-nb", "Waldo, batching off", "waldo", [
            Front("waldo-nb", "waldo no batching", "friendly", "aiohttp", "/v1/models/{model}/predict"),
        ], batching="off (WALDO_MAX_BATCH_SIZE=1)"),
        Peer("triton", "Triton (pytriton)", "triton_peer", [
            Front("triton", "triton v2 HTTP", "v2-http", "perf_analyzer"),
            Front("triton-grpc", "triton v2 gRPC", "v2-grpc", "perf_analyzer"),
        ], venv="triton", batching="Triton's dynamic batcher: max_batch_size, max_queue_delay"),
        Peer("kserve", "KServe ModelServer", "kserve_peer", [
            # perf_analyzer needs GET /v2/models/m/config (Triton's extension), which KServe lacks
            Front("kserve", "kserve v2 HTTP (aiohttp)", "v2-http", "aiohttp", v2, "v2", "v2"),
        ], venv="kserve", batching="none (KServe batches in its Go agent sidecar, not in Python)"),
        Peer("rayserve", "Ray Serve", "rayserve_peer", [
            Front("rayserve", "ray serve @serve.batch", "friendly", "aiohttp", "/predict"),
        ], venv="rayserve", batching="@serve.batch: max_batch_size, batch_wait_timeout_s"),
        Peer("bentoml", "BentoML", "bentoml_peer", [
            Front("bentoml", "bentoml adaptive batch", "friendly", "aiohttp", "/predict", answer="list"),
        ], venv="bentoml", batching="adaptive: max_batch_size, max_latency_ms"),
        Peer("litserve", "LitServe", "litserve_peer", [
            Front("litserve", "litserve batching", "friendly", "aiohttp", "/predict"),
        ], venv="litserve", batching="max_batch_size, batch_timeout"),
        Peer("mlflow", "mlflow models serve", "mlflow_peer", [
            Front("mlflow", "mlflow models serve", "mlflow", "aiohttp", "/invocations", "mlflow", "mlflow"),
        ], batching="none"),
    ]


PEERS = _peers()
ROWS = {f.row: (p, f) for p in PEERS for f in p.fronts}
