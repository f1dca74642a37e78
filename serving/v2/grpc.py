"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`, in the service's own
process and event loop, on `--grpc-port` / `WALDO_GRPC_PORT`.

It shares everything with HTTP: the models and their lifecycles (batcher, limits, statistics,
metrics), the bearer token (metadata `authorization: Bearer <token>`) and the protocol itself
(`serving.v2.protocol`); this module only moves messages. The messages are the gencode that
Triton's released client ships (`tritonclient.grpc.service_pb2`), so the wire format is the one
`tritonclient.grpc` and `perf_analyzer` speak, not a copy that could drift.
"""

from __future__ import annotations

import functools
import logging

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from serving.auth import check_authorization
from serving.errors import ApiError
from serving.manager import ModelManager, ServedModel
from serving.settings import Settings
from serving.v2 import protocol
from serving.v2.protocol import InferRequest, InputTensor, RequestedOutput

log = logging.getLogger("waldo.serving")

# The HTTP statuses of the error contract -> gRPC status codes.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Typed contents per datatype (used when a client sends no raw_input_contents).
_CONTENTS = {"FP32": "fp32_contents", "BYTES": "bytes_contents"}


def _rpc(method):
    """ApiError -> the matching gRPC status with its message; anything else is logged and INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except ApiError as exc:
            await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.UNKNOWN), exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unhandled error in gRPC %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; "
                                                          "see the service log")

    return wrapper


def _parse_infer(request: pb.ModelInferRequest) -> InferRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise protocol.bad(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        if raw:
            data = raw[i]
        else:
            field = _CONTENTS.get(tensor.datatype)
            if field is None:
                raise protocol.bad(f"input {tensor.name!r}: datatype {tensor.datatype!r} is not accepted "
                                   "(FP32 or BYTES)")
            data = list(getattr(tensor.contents, field))
        inputs.append(InputTensor(tensor.name, tensor.datatype, list(tensor.shape), data))
    outputs = []
    for out in request.outputs:
        top = out.parameters["classification"].int64_param if "classification" in out.parameters else 0
        outputs.append(RequestedOutput(out.name, True, int(top)))
    return InferRequest(inputs, outputs, request.id or None, binary_output=True)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, manager: ModelManager, settings: Settings):
        self.manager, self.settings = manager, settings

    def _served(self, name: str) -> ServedModel:
        return self.manager.served(name)

    def _auth(self, context, admin: bool = False) -> None:
        token = (self.settings.admin_key or self.settings.api_key) if admin else self.settings.api_key
        header = dict(context.invocation_metadata() or ()).get("authorization")
        check_authorization(token, header)

    # -- health and metadata ----------------------------------------------------------------
    @_rpc
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.manager.ready)

    @_rpc
    async def ModelReady(self, request, context):
        served = self._served(request.name)
        ok = served.model is not None and request.version in ("", served.model.version)
        return pb.ModelReadyResponse(ready=ok)

    @_rpc
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**protocol.server_metadata())

    @_rpc
    async def ModelMetadata(self, request, context):
        served = self._served(request.name)
        protocol.check_version(served, request.version)
        return json_format.ParseDict(protocol.model_metadata(served), pb.ModelMetadataResponse())

    @_rpc
    async def ModelConfig(self, request, context):
        served = self._served(request.name)
        protocol.check_version(served, request.version)
        config = json_format.ParseDict(protocol.model_config(served), model_config_pb2.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    # -- inference ----------------------------------------------------------------------------
    @_rpc
    async def ModelInfer(self, request, context):
        self._auth(context)
        served = self._served(request.model_name)

        async def parse() -> InferRequest:
            return _parse_infer(request)

        result = await protocol.infer(served, "v2-grpc", parse, request.model_version)
        response = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version,
                                         id=result.id or "")
        for out in result.outputs:
            response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
            response.raw_output_contents.append(out.raw())
        return response

    # -- statistics and the model repository --------------------------------------------------
    @_rpc
    async def ModelStatistics(self, request, context):
        if request.name:
            served = self._served(request.name)
            protocol.check_version(served, request.version)
            models = {request.name: served}
        else:
            models = self.manager.models
        stats = [s.statistics() for s in models.values()]
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    @_rpc
    async def RepositoryIndex(self, request, context):
        rows = protocol.repository_index(self.manager.models, ready_only=request.ready)
        return json_format.ParseDict({"models": rows}, pb.RepositoryIndexResponse())

    @_rpc
    async def RepositoryModelLoad(self, request, context):
        self._auth(context, admin=True)
        await self.manager.load_or_refuse(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request, context):
        self._auth(context, admin=True)
        await self.manager.unload(self._served(request.model_name).name)
        return pb.RepositoryModelUnloadResponse()


async def start(manager: ModelManager, settings: Settings) -> grpc.aio.Server:
    """Start the gRPC front end on the running event loop; `await server.stop(grace)` ends it."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", 64 * 2**20),
        ("grpc.max_concurrent_streams", 256),
        ("grpc.keepalive_time_ms", int(settings.keepalive_timeout_s * 1000 * 12)),
        ("grpc.max_connection_idle_ms", int(settings.keepalive_timeout_s * 1000 * 60)),
    ], maximum_concurrent_rpcs=settings.max_queue)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(manager, settings), server)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # newer grpcio raises where older ones returned 0
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {address} (address already in use?)")
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s", address)
    return server
