"""The Open Inference Protocol's clients against a `waldo serve --grpc-port`: a running server
with a released `tritonclient` for each protocol, and the inputs and bodies the tests send."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from support.processes import Server, clean_env, free_port, start_server
from support.serving import serve_argv


class V2Server:
    """`waldo serve` with HTTP and gRPC, and a tritonclient for each."""

    def __init__(self, server: Server, grpc_port: int, repo: Path):
        self.server, self.url, self.repo = server, server.url, repo
        self.grpc_address = f"127.0.0.1:{grpc_port}"
        self.http = thttp.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
        self.grpc = tgrpc.InferenceServerClient(self.grpc_address)

    def stop(self) -> None:
        self.http.close()
        self.grpc.close()
        self.server.stop()


def start_v2(models: Path, workdir: Path, env: dict[str, str] | None = None, *,
             prefix: Sequence[str] = ()) -> V2Server:
    """`waldo serve --grpc-port` on two free ports (see `support.serving.waldo_serve`)."""
    grpc_ports: list[int] = []

    def argv(port: int) -> list[str]:
        grpc_ports.append(free_port())  # a new one on each try, as for the HTTP port
        return serve_argv(models, port, "--grpc-port", str(grpc_ports[-1]), prefix=prefix)

    return V2Server(start_server(argv, workdir=workdir, env=clean_env(**(env or {}))), grpc_ports[-1], models)


def image_input(module, pngs: list[bytes], *, binary: bool = True, b64: bool = False):
    tensor = module.InferInput("image", [len(pngs), 1], "BYTES")
    values = [base64.b64encode(p) if b64 else p for p in pngs]
    array = np.array(values, dtype=object).reshape(len(pngs), 1)
    if module is thttp:
        tensor.set_data_from_numpy(array, binary_data=binary)
    else:
        tensor.set_data_from_numpy(array)
    return tensor


def tensor_input(module, x: np.ndarray, *, binary: bool = True):
    tensor = module.InferInput("input", list(x.shape), "FP32")
    if module is thttp:
        tensor.set_data_from_numpy(x, binary_data=binary)
    else:
        tensor.set_data_from_numpy(x)
    return tensor


def status_of(call) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status())


def infer_body(inputs: list[dict], outputs: list[dict] | None = None) -> dict:
    return {"inputs": inputs, **({"outputs": outputs} if outputs is not None else {})}
