"""Model information and admin reload."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from serving.deps import ManagerDep, ServedDep, require_admin
from serving.errors import ApiError
from serving.manager import ServedModel
from serving.repository import RepositoryError
from serving.runtime import LoadError

router = APIRouter(prefix="/v1/models", tags=["models"])


def _describe(served: ServedModel) -> dict:
    if served.model is None:
        return {"name": served.name, "source": served.source, "loaded": False, "error": served.error}
    return {**served.model.describe(), "loaded": True, "error": served.error}


@router.get("", summary="Every served model")
async def list_models(manager: ManagerDep) -> dict:
    return {"models": [_describe(s) for s in manager.models.values()]}


@router.get("/{name}", summary="One model: version, task, labels, input spec, providers",
            responses={404: {"description": "unknown model"}})
async def get_model(served: ServedDep) -> dict:
    return _describe(served)


@router.post("/{name}/reload", dependencies=[Depends(require_admin)],
             summary="Load the newest version, or the alias's new target",
             responses={401: {}, 403: {}, 404: {}, 409: {"description": "the new version failed; "
                                                                   "the old one is still served"}})
async def reload(served: ServedDep, manager: ManagerDep) -> dict:
    try:
        return await manager.reload(served.name)
    except (LoadError, RepositoryError) as exc:
        still = f"v{served.model.version} is still served" if served.model else "nothing is served"
        raise ApiError(409, "reload_failed", f"{exc} ({still})") from None
