"""`POST /v1/models/{name}/explain`: for one image, the maps of every conv stage and where the
network looked for a class (`serving.explain`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from httpapi.errors import ApiError
from serving.deps import ManagerDep, ServedDep, SettingsDep, require_user
from serving.explain import explain as explain_one
from serving.inputs import Item
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
