"""`POST /v1/models/{name}/explain`: for one image, the maps of every conv stage and where the
network looked for a class (the maps and pictures: `serving.explain`)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from httpapi.errors import ApiError
from serving import explain as maps
from serving.deps import ManagerDep, ServedDep, SettingsDep, require_user
from serving.inputs import Item, check_answer_bytes
from serving.lifecycle import Lifecycle, Trace
from serving.modelcard import ModelCard
from serving.processing import postprocess
from serving.routes.predict import BODY, ERRORS, media_type, read_items
from serving.versions import VERSION_HEADER

router = APIRouter(prefix="/v1/models", tags=["explain"])


@router.post("/{name}/explain", dependencies=[Depends(require_user)], openapi_extra=BODY,
             summary="Explain one image's answer: feature maps and a class activation map",
             responses=ERRORS | {422: {"description": "more than one image, an unknown class or "
                                                      "stage, or an invalid body"}})
async def explain(
    request: Request,
    served: ServedDep,
    settings: SettingsDep,
    manager: ManagerDep,
    target: Annotated[str | None, Query(
        max_length=256, description="the class to explain: a label, or #N for class index N "
                                    "(default: the predicted class)")] = None,
    stage: Annotated[list[str], Query(
        max_length=64, description="stages to return (stage_1, stage_2, ...; default: all)")] = [],  # noqa: B006 (FastAPI copies it)
    arrays: Annotated[bool, Query(description="also return every stage's maps as numbers")] = False,
) -> JSONResponse:
    # Explains the version the request routes to (Waldo-Model-Version, else the rollout's pick).
    with served.request("explain", headers=request.headers) as trace:
        side = trace.side
        side.loaded()
        media = media_type(request)

        async def read(card) -> list[Item]:
            items = await read_items(request, media, card, settings, manager)
            if len(items) != 1:
                raise ApiError(422, "invalid_input", f"explain takes one image or instance; this "
                                                     f"request has {len(items)}")
            return items

        answer = await explain_one(side, read, trace, target=target, stages=stage, arrays=arrays)
        return JSONResponse(answer, headers={VERSION_HEADER: answer["version"]})


async def explain_one(side: Lifecycle, read, trace: Trace, *, target: str | None,
                      stages: list[str], arrays: bool) -> dict:
    """One explanation on the version `side` serves, through its lifecycle: the image and the
    extra outputs in one run, then (occlusion) the occluded copies queued as predictions are.
    `await read(card)` gives the request's one item. Returns the answer as plain data."""
    from starlette.concurrency import run_in_threadpool

    started = time.perf_counter()
    card = side.loaded().card
    index = maps.parse_target(card, target)
    chosen = maps.choose_stages(card, stages)

    async def one_item(card: ModelCard):
        items = await read(card)
        check_answer_bytes(maps.answer_bytes(card, chosen, arrays), side.settings.max_response_bytes)
        trace.fetch = maps.outputs_to_fetch(card, chosen)
        return items

    done = await Lifecycle.predict(side, one_item, trace)
    if len(done.out) != 1:
        raise ApiError(422, "invalid_input", f"explain takes one image or instance; this request "
                                             f"has {len(done.out)}")
    card = done.model.card
    picked = maps.resolve_target(card, done.out[0], index)
    trace.fetch = ()  # the occluded copies ask for the prediction alone

    async def run(chunk):
        out, _ = await side.wait(side.enqueue(chunk, trace), trace)
        return out

    s = side.settings
    heat, method, passes = await maps.class_map(card, done.x[:1], done.out, done.extras, picked,
                                                run, passes=s.explain_passes,
                                                max_batch=s.max_batch_size)
    with side.encoding(trace):
        parts = await run_in_threadpool(maps.answer_parts, card, done.x[0], heat, done.extras,
                                        chosen, arrays)
    return {
        "model": side.name, "version": done.model.version, "task": card.task,
        "prediction": postprocess(card, done.out, done.sizes, top_k=5)[0],
        "target": {"index": picked.index, "label": picked.label, "score": picked.score},
        "method": method, **parts,
        "cost": {"forward_passes": passes, "ms": round(1000 * (time.perf_counter() - started), 3)},
    }
