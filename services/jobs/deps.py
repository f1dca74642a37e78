"""Dependencies for the routes: the settings, the RayJobs of the app, and the bearer token
(checked by httpapi.auth, the check the inference service uses too)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from httpapi.auth import Credentials, check_bearer
from services.jobs.ray_jobs import RayJobs
from services.jobs.settings import JobsSettings


async def _settings(request: Request) -> JobsSettings:
    return request.app.state.settings


async def _jobs(request: Request) -> RayJobs:
    return request.app.state.jobs


SettingsDep = Annotated[JobsSettings, Depends(_settings)]
JobsDep = Annotated[RayJobs, Depends(_jobs)]


async def require_token(settings: SettingsDep, credentials: Credentials) -> None:
    """Every /v1 route: the token is required (JobsSettings refuses to start without one).
    middleware.RequireToken has checked it before the body was read; checking again here keeps
    the routes safe on their own and puts the bearer scheme into the OpenAPI document."""
    check_bearer(settings.token, credentials)


Authorized = Depends(require_token)  # `dependencies=[Authorized]` on a router
