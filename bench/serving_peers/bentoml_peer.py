"""BentoML 1.4 (.bench-venvs/bentoml): `bentoml serve` of serving_peers.bentoml_service, one
worker, adaptive batching with max_batch_size. BentoML's batcher has no fixed delay to set: it
estimates how long to wait from the measured batch latencies, bounded by max_latency_ms (set to
60 s here so that no request is refused under load; past it BentoML answers 503). Decodes and
preprocesses like Waldo; softmax + top-5 per image. Processes: BentoML's supervisor (circus
arbiter) and one API-server worker that runs the service and its batcher.
"""

from __future__ import annotations

import json

from .process import peer_server, venv_problem


def check(ctx, peer) -> str | None:
    return venv_problem(peer.venv)


def launch(ctx, peer):
    return peer_server(ctx, peer, [], "/readyz")


def serve(argv: list[str] | None = None) -> None:
    import os
    import sys
    from pathlib import Path

    from serving_peers.process import serve_args

    args = serve_args(argv)
    os.environ["SERVING_COMPARE_BENTOML"] = json.dumps({
        "model_dir": args.model_dir, "threads": args.threads, "max_batch_size": args.max_batch_size})
    bentoml = Path(sys.executable).with_name("bentoml")
    bench = Path(__file__).resolve().parents[1]
    os.execv(str(bentoml), [str(bentoml), "serve", "serving_peers.bentoml_service:OnnxService",
                            "--host", "127.0.0.1", "--port", str(args.port),
                            "--working-dir", str(bench)])


if __name__ == "__main__":
    serve()
