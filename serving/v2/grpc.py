"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`, in the service's own
process and event loop, on `--grpc-port` / `WALDO_GRPC_PORT`.

It shares everything with HTTP: the models and their lifecycles (batcher, limits, statistics,
metrics), the bearer token (metadata `authorization: Bearer <token>`) and the protocol itself
(`serving.v2.protocol`); this module only moves messages. The messages are the gencode that
Triton's released client ships (`tritonclient.grpc.service_pb2`), so the wire format is the one
`tritonclient.grpc` and `perf_analyzer` speak, not a copy that could drift.

Its connections are guarded by grpcio's core (`connection_options`): the share of the service's
one connection budget (httpapi.server), the header timeout for a connection that never
completes its HTTP/2 preface and SETTINGS, an idle timeout, a maximum age and a keepalive and
ping policy. With `protect_info`, an interceptor puts the metadata, config, statistics and
repository index RPCs behind the key, as on HTTP; liveness and readiness stay open.
"""

from __future__ import annotations

import functools
import logging

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from httpapi.auth import check_authorization
from httpapi.errors import ApiError, shown
from httpapi.server import connection_budget
from serving.deps import check_info
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
# The RPCs that `protect_info` puts behind the key (HTTP: serving.deps.require_info).
INFO_RPCS = frozenset({"ServerMetadata", "ModelMetadata", "ModelConfig", "ModelStatistics",
                       "RepositoryIndex"})
MAX_CONNECTION_AGE_S = 1800  # clients reconnect (and spread over replicas) at least this often
KEEPALIVE_TIME_S, KEEPALIVE_TIMEOUT_S = 60, 20  # a peer that does not answer a ping is dropped
MIN_CLIENT_PING_INTERVAL_S = 10  # a client pinging more often without data gets GOAWAY


# A status message travels in the trailing metadata, 8 KiB by default and percent-encoded (a
# non-ASCII character takes up to 12 bytes there): past the limit the client gets no status at
# all. Messages echo client text through `shown`; this caps whatever is left.
MAX_MESSAGE_CHARS = 600


def _message(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return f"{text[:MAX_MESSAGE_CHARS]}... (message cut from {len(text)} characters)"


def _rpc(method):
    """ApiError -> the matching gRPC status with its message (capped: `_message`); anything else
    is logged and INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except ApiError as exc:
            await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.UNKNOWN), _message(exc.message))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unhandled error in gRPC %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; "
                                                          "see the service log")

    return wrapper


def _contents(tensor, raw: bytes | None):
    """An input's values: its raw contents, or the typed contents field its datatype takes,
    read from the message one at a time (FP32 into a float32 array, BYTES as an iterator): a
    list of Python objects would cost 32 to 42 bytes a value. Values in any other field are
    refused, not taken for missing ones."""
    name = shown(tensor.name)
    sent = [field.name for field, _ in tensor.contents.ListFields()]
    if raw is not None:
        if sent:
            raise protocol.bad(f"input {name}: values in raw_input_contents and in contents "
                               f"({', '.join(sent)}); send them in one place")
        return raw
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        raise protocol.bad(f"input {name}: datatype {shown(tensor.datatype)} is not accepted (FP32 or BYTES)")
    if [f for f in sent if f != field]:
        raise protocol.bad(f"input {name} is {tensor.datatype} but its values came in {', '.join(sent)}; "
                           f"{tensor.datatype} values travel in {field} or raw_input_contents")
    values = getattr(tensor.contents, field)
    if field == "fp32_contents":
        return np.fromiter(values, dtype=np.float32, count=len(values))
    return iter(values)  # read up to the shape's count at most: 16 MiB of 1-byte elements is 5.6M


def _classification(out) -> int:
    """An output's classification count: 0 without the parameter; an integer parameter only
    (`protocol.check_outputs` bounds it)."""
    if "classification" not in out.parameters:
        return 0
    param = out.parameters["classification"]
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise protocol.bad(f"output {shown(out.name)}: the classification parameter must be an "
                           f"int64_param count, got {kind or 'no value'}")
    return getattr(param, kind)


def _parse_infer(request: pb.ModelInferRequest) -> InferRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise protocol.bad(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    inputs = [InputTensor(tensor.name, tensor.datatype, list(tensor.shape),
                          _contents(tensor, raw[i] if raw else None))
              for i, tensor in enumerate(request.inputs)]
    outputs = [RequestedOutput(out.name, True, _classification(out)) for out in request.outputs]
    return InferRequest(inputs, outputs, request.id or None, binary_output=True)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, manager: ModelManager, settings: Settings):
        self.manager, self.settings = manager, settings

    def _served(self, name: str) -> ServedModel:
        return self.manager.served(name)

    def _auth(self, context, admin: bool = False) -> None:
        token = (self.settings.admin_key or self.settings.api_key) if admin else self.settings.api_key
        headers = [value for key, value in context.invocation_metadata() or () if key == "authorization"]
        check_authorization(token, headers)

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
        ok = served.model is not None and (request.version in ("", served.model.version)
                                           or request.version in [v.version for v in served.versions()])
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

        # Metadata keys arrive in lower case, as the policy's key header is matched over HTTP.
        metadata = {key: value for key, value in context.invocation_metadata() or ()
                    if isinstance(value, str)}
        result = await protocol.infer(served, "v2-grpc", parse, request.model_version, headers=metadata)
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
            stats = self._served(request.name).version_statistics(request.version or None)
        else:  # every version of every model: a rollout's candidate has its own entry
            stats = [entry for s in self.manager.models.values() for entry in s.version_statistics()]
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    @_rpc
    async def RepositoryIndex(self, request, context):
        rows = protocol.repository_index(self.manager.models, ready_only=request.ready)
        return json_format.ParseDict({"models": rows}, pb.RepositoryIndexResponse())

    @_rpc
    async def RepositoryModelLoad(self, request, context):
        self.manager.require_control()  # PERMISSION_DENIED while off, whatever the token
        self._auth(context, admin=True)
        await self.manager.load_or_refuse(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request, context):
        self.manager.require_control()
        self._auth(context, admin=True)
        await self.manager.unload(self._served(request.model_name).name)
        return pb.RepositoryModelUnloadResponse()


class InfoGuard(grpc.aio.ServerInterceptor):
    """`protect_info` for gRPC: the INFO_RPCS need the key (serving.deps.check_info's policy);
    other calls pass untouched. Installed only when protect_info is set."""

    def __init__(self, settings: Settings):
        self.settings = settings

    async def intercept_service(self, continuation, details):
        if details.method.rsplit("/", 1)[-1] in INFO_RPCS:
            headers = [value for key, value in details.invocation_metadata or () if key == "authorization"]
            try:
                check_info(self.settings, lambda token: check_authorization(token, headers))
            except ApiError as exc:
                return _refusal(STATUS_CODES[exc.status], exc.message)
        return await continuation(details)


def _refusal(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def refuse(request, context):
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """The connection policy of the gRPC front end, enforced by grpcio's core (which owns the
    sockets, out of Python's sight):

    - `max_allowed_incoming_connections`: gRPC's share of the one connection budget
      (httpapi.server.connection_budget); a connection past it is closed when accepted;
    - `server_handshake_timeout_ms`: the header timeout; the core closes a connection that has
      not completed its handshake and sent its HTTP/2 SETTINGS by then (silent, preface-only);
    - `max_connection_idle_ms`: a connection without a call for `grpc_idle_timeout_s` gets GOAWAY;
    - `max_connection_age_ms` (+ grace for the calls in flight): clients reconnect every half hour;
    - keepalive: the server pings a connection with calls in flight every minute and drops it
      when the ping is not answered within 20 s; a client may ping every 10 s without data
      (`http2.min_recv_ping_interval_without_data_ms`; past two such strikes, GOAWAY);
    - `max_concurrent_streams`: calls in flight per connection.
    """
    _, grpc_cap = connection_budget(settings.max_connections, settings.grpc_max_connections)
    return [
        ("grpc.max_allowed_incoming_connections", grpc_cap),
        ("grpc.server_handshake_timeout_ms", _ms(settings.header_timeout_s)),
        ("grpc.max_connection_idle_ms", _ms(settings.grpc_idle_timeout_s)),
        ("grpc.max_connection_age_ms", _ms(MAX_CONNECTION_AGE_S)),
        ("grpc.max_connection_age_grace_ms", _ms(settings.request_timeout_s + settings.body_timeout_s)),
        ("grpc.keepalive_time_ms", _ms(KEEPALIVE_TIME_S)),
        ("grpc.keepalive_timeout_ms", _ms(KEEPALIVE_TIMEOUT_S)),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", _ms(MIN_CLIENT_PING_INTERVAL_S)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_concurrent_streams", 256),
    ]


async def start(manager: ModelManager, settings: Settings) -> grpc.aio.Server:
    """Start the gRPC front end on the running event loop; `await server.stop(grace)` ends it."""
    server = grpc.aio.server(
        interceptors=[InfoGuard(settings)] if settings.protect_info else None,
        options=[("grpc.max_receive_message_length", settings.max_body_bytes),
                 # A backstop: answers are reckoned against max_response_bytes before any work;
                 # the slack is the message's framing and names.
                 ("grpc.max_send_message_length", settings.max_response_bytes + 2**20),
                 *connection_options(settings)],
        maximum_concurrent_rpcs=settings.max_queue)
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
