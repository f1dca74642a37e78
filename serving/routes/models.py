"""Model information and reload (repository control, like the v2 repository's load).

Callers see a folder source by its name, not its absolute path on the server, unless they
present the admin key (`ModelManager.public`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from httpapi.errors import ApiError, shown
from serving.deps import AdminDep, ManagerDep, ServedDep, require_admin, require_info
from serving.manager import ModelManager, ServedModel
from serving.repository import RepositoryError
from serving.runtime import LoadError

router = APIRouter(prefix="/v1/models", tags=["models"])


def _describe(served: ServedModel, manager: ModelManager, admin: bool) -> dict:
    """The model as served: its primary version's description, every version served (a
    rollout's candidate beside the primary) and the rollout policy, if any."""
    source = served.source if admin else manager.public(served.source)
    rollout = served.describe_rollout()
    if served.model is None:
        return {"name": served.name, "source": source, "loaded": False, "error": served.error,
                "versions": [], "rollout": rollout}
    versions = [{"version": side.version, "role": "primary" if side is served else "candidate",
                 "precision": side.model.card.precision} for side in served.versions()]
    return {**served.model.describe(), "source": source, "loaded": True, "error": served.error,
            "versions": versions, "rollout": rollout}


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
             summary="Load the newest version, or the alias's new target, and follow its rollout "
                     "policy (repository control); like v2's load, it brings in a model that a "
                     "source gained after the service started",
             responses={401: {}, 403: {"description": "a wrong token, or repository control is off"},
                        404: {"description": "no model source holds the name"},
                        409: {"description": "the new version failed; the old one is still served"}})
async def reload(name: str, manager: ManagerDep) -> dict:
    try:
        return await manager.load(name)
    except KeyError:
        raise ApiError(404, "unknown_model", f"no model source holds a model named {shown(name)}; "
                                             f"served models: {', '.join(sorted(manager.models)) or 'none'}"
                       ) from None
    except (LoadError, RepositoryError) as exc:
        served = manager.models.get(name)
        still = f"v{served.model.version} is still served" if served and served.model else "nothing is served"
        raise ApiError(409, "reload_failed", f"{manager.public(str(exc))} ({still})") from None
