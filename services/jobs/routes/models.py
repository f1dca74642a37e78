"""`/v1/models/{name}/...`: a registered model's alias history, rollback, and its rollout policy,
through serving.registry against the server's MLflow (`tracking_uri`).

Behind the jobs API's token like every /v1 route. The history records the caller as
`jobs-api:<Waldo-User header>` (`jobs-api:caller` without one). The registry's calls block
(MLflow's client uses requests), so they run in the thread pool. A refusal is a 4xx in the
shared error shape: an unknown model, version or alias 404 `unknown_model`, any other refusal
(no earlier holder, an incompatible candidate, a rollout that is not active) 422
`registry_refused`, and a registry that cannot be reached 503 `registry_unavailable`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from httpapi.errors import ApiError
from services.jobs.deps import Authorized, Caller, SettingsDep
from serving.registry.client import RegistryError, UnknownModel, one_line
from serving.registry.moves import AliasMove
from serving.registry.policy import RolloutPolicy, RolloutSettings

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Authorized],
                   responses={401: {"description": "no bearer token"},
                              403: {"description": "a wrong bearer token"},
                              404: {"description": "unknown model, version or alias"},
                              422: {"description": "refused: the message says why"},
                              503: {"description": "the MLflow registry cannot be reached"}})

T = TypeVar("T")
ModelName = Annotated[str, Path(min_length=1, max_length=256, description="registered model name")]
AliasQuery = Annotated[str, Query(min_length=1, max_length=255, description="e.g. production")]


class History(BaseModel):
    name: str
    aliases: dict[str, str] = Field(description="each alias and the version it points at now")
    moves: list[AliasMove] = Field(description="oldest first")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = Field(min_length=1, max_length=255, description="e.g. production")
    reason: str = Field("", max_length=2000, description="why, for the history")


def _client(settings):
    from serving.registry.client import default_tracking_uri, registry_client

    return registry_client(default_tracking_uri(settings.tracking_uri))


async def _registry(call: Callable[[], T]) -> T:
    """Run a registry call in the thread pool; its refusals become the API's errors."""
    try:
        return await run_in_threadpool(call)
    except UnknownModel as exc:
        raise ApiError(404, "unknown_model", str(exc)) from None
    except RegistryError as exc:
        raise ApiError(422, "registry_refused", str(exc)) from None
    except Exception as exc:  # unreachable or failing MLflow; never the caller's fault
        raise ApiError(503, "registry_unavailable", f"the MLflow registry failed: {one_line(exc)}",
                       {"Retry-After": "5"}) from None


@router.get("/{name}/history", summary="Every recorded alias move of a registered model")
async def get_history(name: ModelName, settings: SettingsDep,
                      alias: Annotated[str | None, Query(max_length=255)] = None) -> History:
    from serving.registry.client import aliases
    from serving.registry.moves import check_alias, history

    def call() -> History:
        if alias is not None:
            check_alias(alias)
        client = _client(settings)
        return History(name=name, aliases=aliases(client, name), moves=history(client, name, alias))

    return await _registry(call)


@router.post("/{name}/rollback", summary="Move an alias back to its previous holder")
async def post_rollback(name: ModelName, body: RollbackRequest, settings: SettingsDep,
                        by: Caller) -> AliasMove:
    from serving.registry.moves import rollback

    return await _registry(lambda: rollback(_client(settings), name, body.alias, by=by,
                                            reason=body.reason))


@router.get("/{name}/rollout", summary="The rollout policy of an alias")
async def get_rollout(name: ModelName, settings: SettingsDep,
                      alias: AliasQuery = "production") -> RolloutPolicy:
    from serving.registry.policy import get_policy

    policy = await _registry(lambda: get_policy(_client(settings), name, alias))
    if policy is None:
        raise ApiError(404, "no_rollout", f"{name}@{alias} has no rollout policy")
    return policy


@router.put("/{name}/rollout", summary="Start a canary or shadow rollout of a candidate version")
async def put_rollout(name: ModelName, body: RolloutSettings, settings: SettingsDep,
                      by: Caller) -> RolloutPolicy:
    from serving.registry.policy import set_policy

    policy = RolloutPolicy(**body.model_dump())
    return await _registry(lambda: set_policy(_client(settings), name, policy, by=by))


@router.delete("/{name}/rollout", summary="End an alias's rollout (every replica stops it)")
async def delete_rollout(name: ModelName, settings: SettingsDep, by: Caller,
                         alias: AliasQuery = "production",
                         reason: Annotated[str, Query(max_length=2000)] = "ended through the jobs API",
                         state: Literal["off", "rolled-back"] = "off") -> RolloutPolicy:
    from serving.registry.policy import end_policy, get_policy


    def call() -> RolloutPolicy:
        client = _client(settings)
        end_policy(client, name, alias, by=by, state=state, reason=reason)
        return get_policy(client, name, alias)

    return await _registry(call)
