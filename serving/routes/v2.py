"""The Open Inference Protocol (KServe v2) over HTTP, with Triton's extensions that standard
clients use: binary tensor data, classification, the model repository, statistics and the
model configuration. A thin adapter: the protocol is `serving.v2.protocol`, the inference is
the model's lifecycle, and errors are `{"error": "..."}` (`httpapi.errors`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from httpapi.errors import ApiError, shown
from serving.deps import ManagerDep, ServedDep, require_admin, require_info, require_user
from serving.inputs import load_json, parse_off_loop
from serving.v2 import protocol
from serving.v2.protocol import InferRequest, InferResponse, InputTensor, RequestedOutput
from serving.versions import VERSION_HEADER

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])

HEADER_LENGTH = "inference-header-content-length"


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


def parse_body(body: bytes, header_length: str | None, *, max_values: int) -> InferRequest:
    """A v2 HTTP body (JSON, then binary tensor data if the header says where the JSON ends);
    the JSON within `max_json_values` (`serving.inputs.load_json`)."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise protocol.bad(f"Inference-Header-Content-Length {shown(header_length)} "
                               "is not an integer") from None
        if not 0 <= split <= len(body):
            raise protocol.bad(f"Inference-Header-Content-Length {split} is outside the body's "
                               f"{len(body)} bytes")
        head, binary = body[:split], memoryview(body)[split:]
    else:
        head, binary = body, memoryview(b"")
    try:
        raw = _Body.model_validate(load_json(head, max_values))
    except ApiError as exc:
        if exc.status == 400:  # not JSON
            raise protocol.bad(f"not a v2 inference request: {exc.message}") from None
        raise
    except RecursionError:
        raise protocol.bad("the JSON is nested too deeply") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                             for e in exc.errors()[:3])
        raise protocol.bad(f"not a v2 inference request: {problems}") from None
    inputs, at = [], 0
    for item in raw.inputs:
        size = item.parameters.binary_data_size
        if size is None:
            if item.data is None:
                raise protocol.bad(f"input {shown(item.name)} has neither 'data' nor binary_data_size")
            inputs.append(InputTensor(item.name, item.datatype, item.shape, item.data))
            continue
        if at + size > len(binary):
            raise protocol.bad(f"input {shown(item.name)}: binary_data_size {size} goes past the "
                               f"{len(binary)} bytes of binary data in the body")
        inputs.append(InputTensor(item.name, item.datatype, item.shape, bytes(binary[at:at + size])))
        at += size
    if at != len(binary):
        raise protocol.bad(f"the body holds {len(binary)} bytes of binary data; the inputs' "
                           f"binary_data_size add up to {at}")
    if raw.id is not None and not raw.id.isascii():
        try:  # the answer echoes the id as UTF-8: JSON's "\ud800" (half a pair) cannot be
            raw.id.encode()
        except UnicodeEncodeError:
            raise protocol.bad(f"id {shown(raw.id)} holds half of a UTF-16 surrogate pair") from None
    outputs = [RequestedOutput(o.name, o.parameters.binary_data, o.parameters.classification)
               for o in raw.outputs]
    return InferRequest(inputs, outputs, raw.id, raw.parameters.binary_data_output)


def _json_length(body: bytes, header_length: str | None) -> int:
    """How much of the body is JSON (`parse_body` refuses a header that makes no sense)."""
    try:
        return min(int(header_length), len(body)) if header_length is not None else len(body)
    except ValueError:
        return len(body)


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
    answered = {VERSION_HEADER: result.model_version}
    if not blobs:
        return JSONResponse(head, headers=answered)
    text = json.dumps(head, separators=(",", ":")).encode()
    return Response(b"".join([text, *blobs]), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(text)), **answered})


# -- server ---------------------------------------------------------------------------------
@router.get("/health/live", summary="The process is alive")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Every model the service was started to serve is loaded (400 if "
                                     "not, as the spec says; an unloaded model counts as not loaded)")
async def ready(manager: ManagerDep):
    return JSONResponse({"ready": manager.ready}, status_code=200 if manager.ready else 400)


@router.get("", summary="Server metadata and the protocol extensions it supports",
            dependencies=[Depends(require_info)])
async def server_metadata() -> dict:
    return protocol.server_metadata()


# -- models (the statistics of all first: "stats" is not a model name) -------------------------
@router.get("/models/stats", summary="Statistics of every model", dependencies=[Depends(require_info)])
async def all_stats(manager: ManagerDep) -> dict:
    return {"model_stats": [entry for s in manager.models.values() for entry in s.version_statistics()]}


@router.get("/models/{name}", summary="Model metadata: inputs and outputs",
            dependencies=[Depends(require_info)])
@router.get("/models/{name}/versions/{version}", summary="Model metadata of one version",
            dependencies=[Depends(require_info)])
async def model_metadata(served: ServedDep, version: str | None = None) -> dict:
    protocol.check_version(served, version)
    return protocol.model_metadata(served)


@router.get("/models/{name}/ready", summary="The model is loaded (400 if not)")
@router.get("/models/{name}/versions/{version}/ready", summary="The version is loaded (400 if not)")
async def model_ready(served: ServedDep, version: str | None = None):
    ok = served.model is not None and (version in (None, "")
                                       or version in [v.version for v in served.versions()])
    return JSONResponse({"name": served.name, "ready": ok}, status_code=200 if ok else 400)


@router.get("/models/{name}/config", summary="The model's configuration in Triton's form",
            dependencies=[Depends(require_info)])
@router.get("/models/{name}/versions/{version}/config", summary="One version's configuration",
            dependencies=[Depends(require_info)])
async def model_config(served: ServedDep, version: str | None = None) -> dict:
    protocol.check_version(served, version)
    return protocol.model_config(served)


@router.post("/models/{name}/infer", dependencies=[Depends(require_user)], summary="Inference")
@router.post("/models/{name}/versions/{version}/infer", dependencies=[Depends(require_user)],
             summary="Inference on one version")
async def infer(request: Request, served: ServedDep, manager: ManagerDep,
                version: str | None = None) -> Response:
    async def parse() -> InferRequest:
        body = await request.body()
        header = request.headers.get(HEADER_LENGTH)
        s = served.settings
        return await parse_off_loop(lambda: parse_body(body, header, max_values=s.max_json_values),
                                    size=len(body), json_size=_json_length(body, header),
                                    slots=manager.json_slots, timeout_s=s.request_timeout_s)

    return write_response(await protocol.infer(served, "v2-http", parse, version, headers=request.headers))


@router.get("/models/{name}/stats", summary="Statistics of one model",
            dependencies=[Depends(require_info)])
@router.get("/models/{name}/versions/{version}/stats", summary="Statistics of one version",
            dependencies=[Depends(require_info)])
async def model_stats(served: ServedDep, version: str | None = None) -> dict:
    return {"model_stats": served.version_statistics(version)}


# -- the model repository -----------------------------------------------------------------------
class _IndexBody(BaseModel):
    ready: StrictBool = False


@router.post("/repository/index", summary="Every model the service knows, with its state",
             dependencies=[Depends(require_info)])
async def repository_index(manager: ManagerDep,
                           body: Annotated[_IndexBody | None, Body()] = None) -> JSONResponse:
    return JSONResponse(protocol.repository_index(manager.models, ready_only=bool(body and body.ready)))


@router.post("/repository/models/{name}/load", dependencies=[Depends(require_admin)],
             summary="Load (or reload) a model; a version that fails leaves the served one "
                     "(403 while repository control is off)")
async def load(name: str, manager: ManagerDep) -> dict:
    await manager.load_or_refuse(name)
    return {}


@router.post("/repository/models/{name}/unload", dependencies=[Depends(require_admin)],
             summary="Stop serving a model until it is loaded again; the server is not ready "
                     "meanwhile (403 while repository control is off)")
async def unload(served: ServedDep, manager: ManagerDep) -> dict:
    await manager.unload(served.name)
    return {}
