"""`POST /v1/models/{name}/predict`: images or tensors in, labels (and boxes) out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from serving.deps import ServedDep, SettingsDep, require_user
from serving.errors import ApiError
from serving.inputs import IMAGE_FORMATS, Item, PredictRequest, parse_json
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


async def _read_multipart(request: Request, settings) -> list[Item]:
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


# JSON this small is parsed on the event loop: it costs less than the hop to a worker thread.
INLINE_BYTES = 16 * 1024


@router.post("/{name}/predict", dependencies=[Depends(require_user)], openapi_extra=_BODY,
             summary="Classify or localize images", responses=_ERRORS)
async def predict(
    request: Request,
    served: ServedDep,
    settings: SettingsDep,
    top_k: Annotated[int, Query(ge=1, le=1000, description="classes to return per image")] = 5,
    threshold: Annotated[float, Query(ge=0, le=1, description="p_c above which a box is an object")] = 0.5,
) -> JSONResponse:
    with served.request("v1") as trace:
        served.loaded()  # 503 before reading a body for a model that is not loaded
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("multipart/form-data", "application/json"):
            raise ApiError(415, "unsupported_media_type",
                           f"content type {media or '(none)'!r} is not accepted; send multipart/form-data "
                           "with 'file' fields or application/json with 'instances'")

        async def read(card) -> list[Item]:
            if media == "multipart/form-data":
                return await _read_multipart(request, settings)
            body = await request.body()
            if len(body) <= INLINE_BYTES:
                return parse_json(body, card, settings.max_images)
            return await run_in_threadpool(parse_json, body, card, settings.max_images)

        done = await served.predict(read, trace)
        with served.encoding(trace):
            results = postprocess(done.model.card, done.out, done.sizes, top_k=top_k, threshold=threshold)
        # Plain data already: a JSONResponse skips FastAPI's response validation pass.
        model = done.model
        return JSONResponse({"model": served.name, "version": model.version, "task": model.card.task,
                             "predictions": results})
