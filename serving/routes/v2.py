"""The Open Inference Protocol (KServe v2) over HTTP, with Triton's extensions that standard
clients use: binary tensor data, classification, the model repository, statistics and the
model configuration. A thin adapter: the protocol is `serving.v2.protocol`, the inference is
the model's lifecycle, and errors are `{"error": "..."}` (`serving.errors`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError
from starlette.concurrency import run_in_threadpool

from serving.deps import ManagerDep, ServedDep, require_admin, require_user
from serving.v2 import protocol
from serving.v2.protocol import InferRequest, InferResponse, InputTensor, RequestedOutput

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])

HEADER_LENGTH = "inference-header-content-length"
INLINE_BYTES = 16 * 1024  # JSON this small is parsed on the event loop


class _Parameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_size: StrictInt | None = Field(None, ge=0)
    binary_data: StrictBool | None = None
    classification: StrictInt = Field(0, ge=0)
    binary_data_output: StrictBool = False


class _Input(BaseModel):
    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: _Parameters = _Parameters()
    data: Any = None


class _Output(BaseModel):
    name: str
    parameters: _Parameters = _Parameters()


class _Body(BaseModel):
    """An inference request's JSON (the part before any binary data)."""

    id: str | None = None
    parameters: _Parameters = _Parameters()
    inputs: list[_Input] = Field(min_length=1)
    outputs: list[_Output] = []


def parse_body(body: bytes, header_length: str | None) -> InferRequest:
    """A v2 HTTP body (JSON, then binary tensor data if the header says where the JSON ends)."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise protocol.bad(f"Inference-Header-Content-Length {header_length!r} "
                               "is not an integer") from None
        if not 0 <= split <= len(body):
            raise protocol.bad(f"Inference-Header-Content-Length {split} is outside the body's "
                               f"{len(body)} bytes")
        head, binary = body[:split], memoryview(body)[split:]
    else:
        head, binary = body, memoryview(b"")
    try:
        raw = _Body.model_validate(json.loads(head))
    except RecursionError:
        raise protocol.bad("the JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, ValidationError
        if isinstance(exc, ValidationError):
            exc = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:3])
        raise protocol.bad(f"not a v2 inference request: {exc}") from None
    inputs, at = [], 0
    for item in raw.inputs:
        size = item.parameters.binary_data_size
        if size is None:
            if item.data is None:
                raise protocol.bad(f"input {item.name!r} has neither 'data' nor binary_data_size")
            inputs.append(InputTensor(item.name, item.datatype, item.shape, item.data))
            continue
        if at + size > len(binary):
            raise protocol.bad(f"input {item.name!r}: binary_data_size {size} goes past the "
                               f"{len(binary)} bytes of binary data in the body")
        inputs.append(InputTensor(item.name, item.datatype, item.shape, bytes(binary[at:at + size])))
        at += size
    if at != len(binary):
        raise protocol.bad(f"the body holds {len(binary)} bytes of binary data; the inputs' "
                           f"binary_data_size add up to {at}")
    outputs = [RequestedOutput(o.name, o.parameters.binary_data, o.parameters.classification)
               for o in raw.outputs]
    return InferRequest(inputs, outputs, raw.id, raw.parameters.binary_data_output)


def write_response(result: InferResponse) -> Response:
    head: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version}
    if result.id is not None:
        head["id"] = result.id
    blobs, outputs = [], []
    for out in result.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.binary:
            blob = out.raw()
            blobs.append(blob)
            entry["parameters"] = {"binary_data_size": len(blob)}
        else:
            entry["data"] = out.values()
        outputs.append(entry)
    head["outputs"] = outputs
    if not blobs:
        return JSONResponse(head)
    text = json.dumps(head, separators=(",", ":")).encode()
    return Response(b"".join([text, *blobs]), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(text))})


# -- server ---------------------------------------------------------------------------------
@router.get("/health/live", summary="The process is alive")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Every configured model is loaded (400 if not, as the spec says)")
async def ready(manager: ManagerDep):
    return JSONResponse({"ready": manager.ready}, status_code=200 if manager.ready else 400)


@router.get("", summary="Server metadata and the protocol extensions it supports")
async def server_metadata() -> dict:
    return protocol.server_metadata()


# -- models (the statistics of all first: "stats" is not a model name) -------------------------
@router.get("/models/stats", summary="Statistics of every model")
async def all_stats(manager: ManagerDep) -> dict:
    return {"model_stats": [s.statistics() for s in manager.models.values()]}


@router.get("/models/{name}", summary="Model metadata: inputs and outputs")
@router.get("/models/{name}/versions/{version}", summary="Model metadata of one version")
async def model_metadata(served: ServedDep, version: str | None = None) -> dict:
    protocol.check_version(served, version)
    return protocol.model_metadata(served)


@router.get("/models/{name}/ready", summary="The model is loaded (400 if not)")
@router.get("/models/{name}/versions/{version}/ready", summary="The version is loaded (400 if not)")
async def model_ready(served: ServedDep, version: str | None = None):
    ok = served.model is not None and version in (None, "", served.model.version)
    return JSONResponse({"name": served.name, "ready": ok}, status_code=200 if ok else 400)


@router.get("/models/{name}/config", summary="The model's configuration in Triton's form")
@router.get("/models/{name}/versions/{version}/config", summary="One version's configuration")
async def model_config(served: ServedDep, version: str | None = None) -> dict:
    protocol.check_version(served, version)
    return protocol.model_config(served)


@router.post("/models/{name}/infer", dependencies=[Depends(require_user)], summary="Inference")
@router.post("/models/{name}/versions/{version}/infer", dependencies=[Depends(require_user)],
             summary="Inference on one version")
async def infer(request: Request, served: ServedDep, version: str | None = None) -> Response:
    async def parse() -> InferRequest:
        body = await request.body()
        header = request.headers.get(HEADER_LENGTH)
        if len(body) <= INLINE_BYTES:
            return parse_body(body, header)
        return await run_in_threadpool(parse_body, body, header)

    return write_response(await protocol.infer(served, "v2-http", parse, version))


@router.get("/models/{name}/stats", summary="Statistics of one model")
@router.get("/models/{name}/versions/{version}/stats", summary="Statistics of one version")
async def model_stats(served: ServedDep, version: str | None = None) -> dict:
    protocol.check_version(served, version)
    return {"model_stats": [served.statistics()]}


# -- the model repository -----------------------------------------------------------------------
class _IndexBody(BaseModel):
    ready: StrictBool = False


@router.post("/repository/index", summary="Every model the service knows, with its state")
async def repository_index(manager: ManagerDep,
                           body: Annotated[_IndexBody | None, Body()] = None) -> JSONResponse:
    return JSONResponse(protocol.repository_index(manager.models, ready_only=bool(body and body.ready)))


@router.post("/repository/models/{name}/load", dependencies=[Depends(require_admin)],
             summary="Load (or reload) a model; a version that fails leaves the served one")
async def load(name: str, manager: ManagerDep) -> dict:
    await manager.load_or_refuse(name)
    return {}


@router.post("/repository/models/{name}/unload", dependencies=[Depends(require_admin)],
             summary="Stop serving a model until it is loaded again")
async def unload(served: ServedDep, manager: ManagerDep) -> dict:
    await manager.unload(served.name)
    return {}
