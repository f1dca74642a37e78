"""Dependencies for the routes: the app's state, the served model by name, and the bearer token.

All are `async def`: they only read state, and FastAPI would run a plain `def` dependency in
its thread pool, a thread hop per dependency per request."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from serving.errors import ApiError
from serving.manager import ModelManager, ServedModel
from serving.metrics import Metrics
from serving.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="WALDO_API_KEY, when the service sets one")


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
    served = manager.models.get(name)
    if served is None:
        known = ", ".join(sorted(manager.models)) or "none"
        raise ApiError(404, "unknown_model", f"unknown model {name!r}; served models: {known}")
    return served


ServedDep = Annotated[ServedModel, Depends(_served)]


def _check(token: SecretStr | None, credentials: HTTPAuthorizationCredentials | None) -> None:
    if token is None:
        return
    if credentials is None:
        raise ApiError(401, "unauthorized", "this endpoint needs an Authorization: Bearer <token> header",
                       headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise ApiError(403, "forbidden", "the bearer token is not valid for this endpoint")


_Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def require_user(settings: SettingsDep, credentials: _Credentials) -> None:
    _check(settings.api_key, credentials)


async def require_admin(settings: SettingsDep, credentials: _Credentials) -> None:
    _check(settings.admin_key or settings.api_key, credentials)
