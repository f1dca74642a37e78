"""`POST /v1/models/{name}/predict`: images or tensors in, labels (and boxes) out."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from httpapi.errors import ApiError, shown
from serving.deps import ManagerDep, ServedDep, SettingsDep, require_user
from serving.inputs import IMAGE_FORMATS, Item, PredictRequest, check_answer_bytes, parse_json, parse_off_loop
from serving.modelcard import ModelCard
from serving.processing import postprocess
from serving.versions import VERSION_HEADER

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


BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            "application/json": {"schema": _inline(PredictRequest.model_json_schema())},
        },
    }
}
ERRORS = {s: {"description": d} for s, d in [
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
            name = shown(upload.filename) if upload.filename else "unnamed"
            items.append((f"file[{i}] ({name})", await upload.read()))
        return items
    finally:
        await form.close()


def media_type(request: Request) -> str:
    """The body's media type: multipart/form-data or application/json, else 415."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ("multipart/form-data", "application/json"):
        raise ApiError(415, "unsupported_media_type",
                       f"content type {shown(media) if media else '(none)'} is not accepted; send "
                       "multipart/form-data with 'file' fields or application/json with 'instances'")
    return media


async def read_items(request: Request, media: str, card: ModelCard, settings, manager) -> list[Item]:
    """The request's images (multipart `file` fields) or instances (JSON), under the limits."""
    if media == "multipart/form-data":
        return await _read_multipart(request, settings)
    body = await request.body()
    return await parse_off_loop(
        lambda: parse_json(body, card, settings.max_images, max_values=settings.max_json_values),
        size=len(body), json_size=len(body), slots=manager.json_slots,
        timeout_s=settings.request_timeout_s)


def answer_bytes(card: ModelCard, rows: int, top_k: int) -> int:
    """An upper bound of the answer's JSON size, from the request alone (`max_response_bytes`):
    per row its label and probability and `top_k` of them (classify), or p_c, the label and the
    box (localize); each float at its longest JSON text (24 bytes), each label at the longest."""
    longest = max(len(json.dumps(label, ensure_ascii=False).encode()) for label in card.labels)
    if card.task == "classify":
        per_row = 64 + longest + min(top_k, len(card.labels)) * (52 + longest)
    else:
        per_row = 256 + longest
    return 256 + rows * per_row


@router.post("/{name}/predict", dependencies=[Depends(require_user)], openapi_extra=BODY,
             summary="Classify or localize images", responses=ERRORS)
async def predict(
    request: Request,
    served: ServedDep,
    settings: SettingsDep,
    manager: ManagerDep,
    top_k: Annotated[int, Query(ge=1, le=1000, description="classes to return per image")] = 5,
    threshold: Annotated[float, Query(ge=0, le=1, description="p_c above which a box is an object")] = 0.5,
) -> JSONResponse:
    # The version named by the Waldo-Model-Version header, else the rollout's pick.
    with served.request("v1", headers=request.headers) as trace:
        trace.side.loaded()  # 503 before reading a body for a model that is not loaded
        media = media_type(request)

        async def read(card) -> list[Item]:
            items = await read_items(request, media, card, settings, manager)
            check_answer_bytes(answer_bytes(card, len(items), top_k), settings.max_response_bytes)
            return items

        done = await served.predict(read, trace)
        with served.encoding(trace):
            results = postprocess(done.model.card, done.out, done.sizes, top_k=top_k, threshold=threshold)
        # Plain data already: a JSONResponse skips FastAPI's response validation pass.
        model = done.model
        return JSONResponse({"model": served.name, "version": model.version, "task": model.card.task,
                             "predictions": results}, headers={VERSION_HEADER: model.version})
