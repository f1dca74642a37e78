"""The jobs API's own failures, mapped onto the error contract it shares with the inference
service (httpapi.errors): an unknown job is 404 `unknown_job`, an unreachable Ray cluster 503
`cluster_unavailable` with Retry-After."""

from __future__ import annotations

from fastapi import FastAPI, Request

from httpapi import errors
from httpapi.errors import ApiError
from services.jobs.ray_jobs import ClusterUnavailable, UnknownJob


def _unknown_job(request: Request, exc: Exception) -> ApiError:
    return ApiError(404, "unknown_job", f"no Waldo job {request.path_params.get('job_id')!r}")


def _cluster_unavailable(request: Request, exc: Exception) -> ApiError:
    return ApiError(503, "cluster_unavailable", str(exc), {"Retry-After": "5"})


TRANSLATIONS = {UnknownJob: _unknown_job, ClusterUnavailable: _cluster_unavailable}


def install(app: FastAPI) -> None:
    errors.install(app, TRANSLATIONS, logger="waldo.jobs")
