"""Ray Serve 2.60 (.bench-venvs/rayserve: `ray[serve]` would move the project's protobuf 6 -> 7):
one replica of a deployment around the same ORT session, `@serve.batch` with max_batch_size
and batch_wait_timeout_s = --max-delay-ms, max_ongoing_requests 256 (the default, 5, would cap
every batch at 5), access log off. Takes Waldo's friendly JSON; decodes and preprocesses like
Waldo, one ORT run per batch, softmax + top-5 per image. Processes (all in this server's
session): the driver, GCS, raylet, the HTTP proxy actor, the controller actor and the replica
actor, plus Ray's idle workers; the request goes proxy -> replica over Ray's RPC.
"""

from __future__ import annotations

from .process import peer_server, venv_problem


def check(ctx, peer) -> str | None:
    return venv_problem(peer.venv)


def launch(ctx, peer):
    # GET /predict answers 200 once the application is deployed (the proxy 404s until then).
    # Ray's socket paths must stay under 107 bytes: a short folder inside the work folder.
    return peer_server(ctx, peer, [], "/predict", RAY_USAGE_STATS_ENABLED="0",
                       BENCH_RAY_DIR=str(ctx.work / "r"))


def serve(argv: list[str] | None = None) -> None:
    import os
    import time

    import numpy as np
    import ray
    from ray import serve as rserve
    from starlette.requests import Request

    from serving_peers.process import serve_args

    args = serve_args(argv)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             _temp_dir=os.environ["BENCH_RAY_DIR"])
    quiet = {"enable_access_log": False, "log_level": "WARNING"}
    rserve.start(http_options={"host": "127.0.0.1", "port": args.port}, logging_config=quiet)

    @rserve.deployment(num_replicas=1, max_ongoing_requests=256, logging_config=quiet)
    class OnnxDeployment:
        def __init__(self, model_dir: str, threads: int):
            from serving_peers.peer_model import OnnxModel

            self.model = OnnxModel(model_dir, threads)

        @rserve.batch(max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.max_delay_ms / 1000)
        async def run(self, items: list) -> list:
            logits = self.model.logits(np.stack([x for x, _ in items]))
            return self.model.predictions(logits, [size for _, size in items])

        async def __call__(self, request: Request):
            if request.method == "GET":
                return {"ready": True}
            body = await request.json()
            return {"predictions": [await self.run(self.model.item(body["instances"][0]))]}

    rserve.run(OnnxDeployment.bind(args.model_dir, args.threads), name="onnx", route_prefix="/predict")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    serve()
