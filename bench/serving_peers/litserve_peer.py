"""LitServe: a LitAPI around the ONNX Runtime session, batching with the same max_batch_size
and batch_timeout as Waldo; decode + preprocess per request in decode_request and softmax +
top-5 in encode_response, so it does the same work per request as Waldo's friendly API. One
API-server process plus one inference worker (LitServe's minimum). Venv: .bench-venvs/litserve.
"""

from __future__ import annotations

import os

from .process import peer_server, venv_problem

# LitServe starts its inference worker with multiprocessing "spawn", which pickles the LitAPI and
# re-imports this module in the child: the class must live at module level. It is defined only in
# that server's processes (marked by this variable), so the benchmark never imports litserve.
ROLE = "SERVING_COMPARE_LITSERVE"


def check(ctx, peer) -> str | None:
    return venv_problem(peer.venv)


def launch(ctx, peer):
    return peer_server(ctx, peer, [], "/health", **{ROLE: "1"})


if os.environ.get(ROLE) == "1":
    import litserve as ls
    import numpy as np

    from serving_peers.peer_model import OnnxModel

    class OnnxAPI(ls.LitAPI):
        def __init__(self, model_dir: str, threads: int, **kwargs):
            super().__init__(**kwargs)
            self.model_dir, self.threads = model_dir, threads

        def setup(self, device):
            self.model = OnnxModel(self.model_dir, self.threads)

        def decode_request(self, request):
            return self.model.item(request["instances"][0])

        def batch(self, inputs):
            return np.stack([x for x, _ in inputs]), [size for _, size in inputs]

        def predict(self, x):
            if isinstance(x[1], list):  # batched: (B, C, H, W), [sizes]
                batch, sizes = x
            else:  # max_batch_size 1: one decoded request
                batch, sizes = x[0][None], [x[1]]
            return self.model.logits(batch), sizes

        def unbatch(self, output):
            out, sizes = output
            return [(out[i:i + 1], [sizes[i]]) for i in range(len(out))]

        def encode_response(self, output):
            return {"predictions": self.model.predictions(*output)}


def serve(argv: list[str] | None = None) -> None:
    from serving_peers.process import serve_args

    args = serve_args(argv)
    api = OnnxAPI(args.model_dir, args.threads, max_batch_size=args.max_batch_size,
                  batch_timeout=args.max_delay_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=30)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning",
               generate_client_file=False)


if __name__ == "__main__":
    serve()
