"""KServe's Python ModelServer (kserve 0.21, .bench-venvs/kserve): a `kserve.Model` whose
async `predict` takes a v2 InferRequest (`image` BYTES, decoded and preprocessed like Waldo,
or `input` FP32) and answers `probabilities` FP32 [n, K] from the same ORT session. One
uvicorn worker (REST, v2 protocol) plus its gRPC server in the same process. The Python server
has no batching: KServe batches in its Go agent sidecar, which needs Kubernetes. Latency
logging is off (it logs a line per request otherwise).
"""

from __future__ import annotations

from .process import peer_server, venv_problem


def check(ctx, peer) -> str | None:
    return venv_problem(peer.venv)


def launch(ctx, peer):
    return peer_server(ctx, peer, [], f"/v2/models/{ctx.name}/ready", grpc=True)


def serve(argv: list[str] | None = None) -> None:
    import sys

    from serving_peers.process import serve_args

    args = serve_args(argv)
    sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv when imported
    import numpy as np
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

    from serving_peers.peer_model import OnnxModel, v2_inputs

    class OnnxModelV2(Model):
        def __init__(self):
            self.onnx = OnnxModel(args.model_dir, args.threads)
            super().__init__(self.onnx.name)
            self.ready = True

        async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
            inputs = {i.name: i.as_numpy() for i in payload.inputs}
            probs = self.onnx.probabilities(np.stack(v2_inputs(inputs, self.onnx)))
            out = InferOutput(name="probabilities", shape=list(probs.shape), datatype="FP32")
            out.set_data_from_numpy(probs, binary_data=False)
            return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[out])

    ModelServer(http_port=args.port, grpc_port=args.grpc_port, workers=1, enable_grpc=True,
                enable_latency_logging=False).start([OnnxModelV2()])


if __name__ == "__main__":
    serve()
