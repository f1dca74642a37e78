"""Model information and reload (repository control, like the v2 repository's load).

Callers see a folder source by its name, not its absolute path on the server, unless they
present the admin key (`ModelManager.public`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from httpapi.errors import ApiError
from serving.deps import AdminDep, ManagerDep, ServedDep, require_admin, require_info
from serving.manager import ModelManager, ServedModel
from serving.repository import RepositoryError
from serving.runtime import LoadError

router = APIRouter(prefix="/v1/models", tags=["models"])


def _describe(served: ServedModel, manager: ModelManager, admin: bool) -> dict:
    source = served.source if admin else manager.public(served.source)
    if served.model is None:
        return {"name": served.name, "source": source, "loaded": False, "error": served.error}
    return {**served.model.describe(), "source": source, "loaded": True, "error": served.error}


@router.get("", summary="Every served model", dependencies=[Depends(require_info)],
            responses={401: {}, 403: {}})
async def list_models(manager: ManagerDep, admin: AdminDep) -> dict:
    return {"models": [_describe(s, manager, admin) for s in manager.models.values()]}


@router.get("/{name}", summary="One model: version, task, labels, input spec, providers",
            dependencies=[Depends(require_info)],
            responses={401: {}, 403: {}, 404: {"description": "unknown model"}})
async def get_model(served: ServedDep, manager: ManagerDep, admin: AdminDep) -> dict:
    return _describe(served, manager, admin)


@router.post("/{name}/reload", dependencies=[Depends(require_admin)],
             summary="Load the newest version, or the alias's new target (repository control)",
             responses={401: {}, 403: {"description": "a wrong token, or repository control is off"},
                        404: {}, 409: {"description": "the new version failed; the old one is "
                                                      "still served"}})
async def reload(served: ServedDep, manager: ManagerDep) -> dict:
    try:
        return await manager.reload(served.name)
    except (LoadError, RepositoryError) as exc:
        still = f"v{served.model.version} is still served" if served.model else "nothing is served"
        raise ApiError(409, "reload_failed", f"{manager.public(str(exc))} ({still})") from None
