"""Dependencies for the routes: the settings, the RayJobs of the app, and the bearer token
(checked by httpapi.auth, the check the inference service uses too)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Request

from httpapi.auth import Credentials, check_bearer
from httpapi.errors import ApiError
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

_USER = re.compile(r"[\w.@+-]{1,100}")


async def _caller(user: Annotated[str | None, Header(
        alias="Waldo-User", description="who acts, recorded in the alias history and by a job's "
                                        "promotion (letters, digits and . @ + - _)")] = None) -> str:
    """Who acts through the jobs API, as the registry's history records it: `jobs-api:<user>`
    from the Waldo-User header, `jobs-api:caller` without one (the token names no person)."""
    if user is None:
        return "jobs-api:caller"
    if not _USER.fullmatch(user):
        raise ApiError(400, "bad_request", "header Waldo-User must be 1-100 letters, digits or "
                                           ". @ + - _")
    return f"jobs-api:{user}"


Caller = Annotated[str, Depends(_caller)]
