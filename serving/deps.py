"""Dependencies for the routes: the app's state, the served model by name, and the bearer
tokens (checked by httpapi.auth, which the jobs API shares): `require_user` for inference,
`require_admin` for repository control, `require_info` for information (`protect_info`).

All are `async def`: they only read state, and FastAPI would run a plain `def` dependency in
its thread pool, a thread hop per dependency per request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from pydantic import SecretStr

from httpapi.auth import Credentials, check_bearer
from httpapi.errors import ApiError
from serving.manager import ModelManager, ServedModel
from serving.metrics import Metrics
from serving.settings import Settings


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _manager(request: Request) -> ModelManager:
    return request.app.state.manager


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(_settings)]
ManagerDep = Annotated[ModelManager, Depends(_manager)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]


async def _served(manager: ManagerDep, name: Annotated[str, Path(description="model name")]) -> ServedModel:
    return manager.served(name)


ServedDep = Annotated[ServedModel, Depends(_served)]


async def require_user(settings: SettingsDep, credentials: Credentials) -> None:
    check_bearer(settings.api_key, credentials)


async def require_admin(manager: ManagerDep, credentials: Credentials) -> None:
    """Repository control: 403 while it is off, whatever the token; then its key."""
    manager.require_control()
    check_bearer(manager.settings.control_key, credentials)


def presents(token: SecretStr | None, check: Callable[[SecretStr], None]) -> bool:
    """Whether the caller's credentials are `token` (never when it is unset); `check` is the
    front end's bearer check (HTTP's `check_bearer`, gRPC's `check_authorization`)."""
    if token is None:
        return False
    try:
        check(token)
    except ApiError:
        return False
    return True


def check_info(settings: Settings, check: Callable[[SecretStr | None], None]) -> None:
    """Information (metadata, metrics, the schema): open, or with `protect_info` the api key,
    the admin key passing too. One policy for HTTP and gRPC; `check` as in `presents`."""
    if settings.protect_info and not presents(settings.admin_key, check):
        check(settings.api_key or settings.admin_key)


async def require_info(settings: SettingsDep, credentials: Credentials) -> None:
    check_info(settings, lambda token: check_bearer(token, credentials))


async def is_admin(settings: SettingsDep, credentials: Credentials) -> bool:
    """Whether the caller presented the admin key (it may see the server's paths)."""
    return presents(settings.admin_key, lambda token: check_bearer(token, credentials))


AdminDep = Annotated[bool, Depends(is_admin)]
