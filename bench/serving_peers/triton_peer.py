"""Triton Inference Server through pytriton (.bench-venvs/triton): the real `tritonserver`
binary (its C++ HTTP and gRPC front ends and its dynamic batcher) in front of a Python model that
runs the same ONNX Runtime session. The wheel carries only Triton's Python backend, not its
native ONNX Runtime backend, so the model is a Python callable: tritonserver passes each batch
to a Python-backend stub process, which hands it to this process (pytriton's proxy) over shared
memory. Processes: this one, tritonserver, one stub. Inputs as Waldo's v2 model: `image` BYTES
[-1, 1] (decoded and preprocessed here, like Waldo) or `input` FP32 [-1, C, H, W], both
optional, exactly one per request; output `probabilities` FP32 [-1, K]. One model instance,
dynamic batching with max_batch_size and max_queue_delay = --max-delay-ms.
"""

from __future__ import annotations

import os
import sysconfig

from .process import peer_server, venv_problem


def check(ctx, peer) -> str | None:
    return venv_problem(peer.venv)


def launch(ctx, peer):
    # The Python-backend stub links libpython3.11.so.1.0 and finds Debian's (3.11.2) before
    # pyenv's; with pyenv's 3.11.7 standard library that breaks (multiprocessing calls
    # RLock._recursion_count, which 3.11.2's C RLock lacks). Put the venv's own libpython first.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld = os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)
    return peer_server(ctx, peer, [], f"/v2/models/{ctx.name}/ready", grpc=True, LD_LIBRARY_PATH=ld)


def serve(argv: list[str] | None = None) -> None:
    import logging

    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig

    from serving_peers.peer_model import OnnxModel, v2_inputs
    from serving_peers.process import free_port, serve_args

    logging.basicConfig(level=logging.WARNING)
    args = serve_args(argv)
    model = OnnxModel(args.model_dir, args.threads)
    classes = len(model.card.labels)

    def infer(requests):
        """One call per batch Triton's dynamic batcher formed: decode each request's images,
        one ORT run for all of them, split the rows back."""
        images, counts = [], []
        for request in requests:
            xs = v2_inputs({k: request[k] for k in ("image", "input") if k in request}, model)
            images.extend(xs)
            counts.append(len(xs))
        probs = model.probabilities(np.stack(images))
        out, at = [], 0
        for n in counts:
            out.append({"probabilities": probs[at:at + n]})
            at += n
        return out

    config = TritonConfig(http_address="127.0.0.1", http_port=args.port, grpc_address="127.0.0.1",
                          grpc_port=args.grpc_port, metrics_port=free_port(), allow_metrics=False,
                          log_verbose=0)
    # perf_analyzer reads the server-side statistics endpoint, which pytriton guards by default.
    security = TritonSecurityConfig(
        restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=model.name, infer_func=infer,
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,), optional=True),
                    Tensor(name="input", dtype=np.float32, shape=model.shape, optional=True)],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(classes,))],
            config=ModelConfig(max_batch_size=args.max_batch_size, batcher=DynamicBatcher(
                max_queue_delay_microseconds=int(args.max_delay_ms * 1000))),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    serve()
