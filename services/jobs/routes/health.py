"""Liveness, and readiness: the Ray cluster answers. Neither needs the token."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from services.jobs.deps import JobsDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="The Ray cluster answers",
            responses={503: {"description": "the Ray cluster is unreachable"}})
async def readyz(jobs: JobsDep, settings: SettingsDep) -> dict:
    await run_in_threadpool(jobs.ping)
    return {"ready": True, "ray_address": settings.ray_address}
