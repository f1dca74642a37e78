"""Dependencies for the routes: the app's state, the served model by name, and the bearer
token (checked by serving.auth, which the jobs API shares).

All are `async def`: they only read state, and FastAPI would run a plain `def` dependency in
its thread pool, a thread hop per dependency per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from serving.auth import Credentials, check_bearer
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


async def require_admin(settings: SettingsDep, credentials: Credentials) -> None:
    check_bearer(settings.admin_key or settings.api_key, credentials)
