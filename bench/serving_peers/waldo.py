"""Waldo's own service (`waldo serve`: uvicorn under httpapi.server), from this checkout or
from --waldo-code, with the v2 gRPC front end on; batching on (peer "waldo") or off ("waldo-nb")."""

from __future__ import annotations

import sys
from pathlib import Path

from .process import ROOT, Server, free_port, server_env


def check(ctx, peer) -> str | None:
    return None


def launch(ctx, peer) -> Server:
    args = ctx.args
    port, grpc_port = free_port(), free_port()
    batch = args.max_batch_size if peer.name == "waldo" else 1
    env = server_env(args.threads, WALDO_MODELS=str(ctx.repo), WALDO_PROVIDERS="CPUExecutionProvider",
                     WALDO_INTRA_OP_THREADS=str(args.threads), WALDO_INTER_OP_THREADS="1",
                     WALDO_MAX_BATCH_SIZE=str(batch), WALDO_MAX_DELAY_MS=str(args.max_delay_ms),
                     WALDO_CACHE_DIR=str(ctx.work / "cache"))
    code = Path(args.waldo_code).resolve() if args.waldo_code else ROOT
    env["PYTHONPATH"] = str(code)
    cmd = [sys.executable, "-c", "import sys; from serving.cli import main; sys.exit(main(sys.argv[1:]))",
           "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port),
           "--log-level", "warning"]
    server = Server(peer.title, cmd, env, f"http://127.0.0.1:{port}/readyz",
                    ctx.work / f"server-{peer.name}.log", code)
    server.http, server.grpc = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    return server
