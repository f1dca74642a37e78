"""`POST /v1/models/{name}/predict`: images or tensors in, labels (and boxes) out."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from serving.batching import QueueFull
from serving.deps import MetricsDep, ServedDep, SettingsDep, require_user
from serving.errors import ApiError
from serving.inputs import IMAGE_FORMATS, Inputs, PredictRequest, parse_json
from serving.processing import postprocess

router = APIRouter(prefix="/v1/models", tags=["predict"])

_MULTIPART_SCHEMA = {
    "type": "object",
    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                            "description": f"one or more images ({', '.join(IMAGE_FORMATS)})"}},
    "required": ["file"],
}
def _inline(schema: dict) -> dict:
    """A pydantic JSON schema with its `$defs` substituted in place, so the OpenAPI document
    (which has no `$defs` of its own) stays resolvable for clients and fuzzers."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            "application/json": {"schema": _inline(PredictRequest.model_json_schema())},
        },
    }
}
_ERRORS = {s: {"description": d} for s, d in [
    (400, "undecodable image or JSON"), (401, "no bearer token"), (403, "wrong bearer token"),
    (404, "unknown model"), (413, "body, image or image count over the limit"),
    (415, "content type other than multipart/form-data or application/json"),
    (422, "wrong shape, NaN, or invalid parameters"), (503, "queue full; retry after Retry-After"),
    (504, "timed out waiting for inference")]}


async def _read_multipart(request: Request, settings) -> list[tuple[str, bytes]]:
    try:
        form = await request.form(max_files=settings.max_images, max_fields=settings.max_images)
    except ApiError:
        raise
    except Exception as exc:  # starlette's MultiPartException and parser errors
        detail = getattr(exc, "detail", None) or str(exc)
        if "Too many files" in detail:
            raise ApiError(413, "too_many", f"more than {settings.max_images} images; send at most "
                                            f"{settings.max_images} per request") from None
        raise ApiError(400, "bad_multipart", f"cannot parse the multipart body: {detail}") from None
    try:
        uploads = form.getlist("file")
        if not uploads:
            raise ApiError(422, "invalid_input", "no images: send one or more form fields named 'file'")
        if len(uploads) > settings.max_images:
            raise ApiError(413, "too_many", f"{len(uploads)} images; the limit is {settings.max_images}")
        items = []
        for i, upload in enumerate(uploads):
            if not isinstance(upload, UploadFile):
                raise ApiError(422, "invalid_input", f"form field file[{i}] is text; send it as a file")
            items.append((f"file[{i}] ({upload.filename or 'unnamed'})", await upload.read()))
        return items
    finally:
        await form.close()


# Work this small runs on the event loop: it costs less than the hop to a worker thread and back.
INLINE_BYTES = 16 * 1024  # JSON to parse
INLINE_PIXELS = 256 * 256  # pixels to decode


async def _decode(request: Request, inputs: Inputs, settings) -> np.ndarray:
    """Decode on the event loop when small, else on a worker thread holding one of the
    service's decode slots (`max_concurrent_decodes`), which bounds the memory that decoding
    can take across all requests."""
    if inputs.pixels <= INLINE_PIXELS:
        return inputs.decode()
    slots: asyncio.Semaphore = request.app.state.decode_slots
    try:
        await asyncio.wait_for(slots.acquire(), settings.request_timeout_s)
    except TimeoutError:
        raise ApiError(503, "overloaded", f"no decode slot free within {settings.request_timeout_s} s; "
                                          "retry shortly", headers={"Retry-After": "1"}) from None
    try:
        return await run_in_threadpool(inputs.decode)
    finally:
        slots.release()


@router.post("/{name}/predict", dependencies=[Depends(require_user)], openapi_extra=_BODY,
             summary="Classify or localize images", responses=_ERRORS)
async def predict(
    request: Request,
    served: ServedDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    top_k: Annotated[int, Query(ge=1, le=1000, description="classes to return per image")] = 5,
    threshold: Annotated[float, Query(ge=0, le=1, description="p_c above which a box is an object")] = 0.5,
) -> JSONResponse:
    started = time.perf_counter()
    status = 200
    try:
        if served.model is None or served.batcher is None:
            raise ApiError(503, "not_loaded", f"model {served.name!r} is not loaded: {served.error}",
                           headers={"Retry-After": "5"})
        card = served.model.card
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("multipart/form-data", "application/json"):
            raise ApiError(415, "unsupported_media_type",
                           f"content type {media or '(none)'!r} is not accepted; send multipart/form-data "
                           "with 'file' fields or application/json with 'instances'")
        with served.batcher.announce():  # a batch being formed waits for this request
            if media == "multipart/form-data":
                items = await _read_multipart(request, settings)
            else:
                body = await request.body()
                if len(body) <= INLINE_BYTES:
                    items = parse_json(body, card, settings.max_images)
                else:
                    items = await run_in_threadpool(parse_json, body, card, settings.max_images)
                del body
            inputs = Inputs(card, items, max_pixels=settings.max_image_pixels,
                            max_request_pixels=settings.max_request_pixels)
            del items
            x = await _decode(request, inputs, settings)
            sizes = inputs.sizes
            try:
                queued = served.batcher.put(x)
            except QueueFull as exc:
                raise ApiError(503, "overloaded", f"{exc}; retry shortly",
                               headers={"Retry-After": "1"}) from None
        try:
            out, model = await asyncio.wait_for(queued, settings.request_timeout_s)
        except TimeoutError:
            raise ApiError(504, "timeout", f"no result within {settings.request_timeout_s} s") from None
        results = postprocess(model.card, out, sizes, top_k=top_k, threshold=threshold)
        # Plain data already: a JSONResponse skips FastAPI's response validation pass.
        return JSONResponse({"model": served.name, "version": model.version, "task": model.card.task,
                             "predictions": results})
    except ApiError as exc:
        status = exc.status
        raise
    except Exception:
        status = 500
        raise
    finally:
        metrics.requests.labels(served.name, str(status)).inc()
        metrics.latency.labels(served.name).observe(time.perf_counter() - started)
