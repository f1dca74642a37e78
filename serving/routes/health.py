"""Liveness, readiness and Prometheus metrics. Liveness and readiness are always open (the
orchestrator probes them); metrics follow `protect_info`."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from serving.deps import ManagerDep, MetricsDep, require_info
from serving.metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Every model the service was started to serve is loaded",
            responses={503: {"description": "some model is not loaded (or was unloaded): `not_ready` "
                                            "names it, `models` says why"}})
async def readyz(manager: ManagerDep):
    body = {
        "ready": manager.ready,
        "not_ready": manager.not_ready,
        "models": {name: {"version": s.model.version if s.model else None, "error": s.error}
                   for name, s in manager.models.items()},
        "errors": list(manager.source_errors.values()),
    }
    return JSONResponse(body, status_code=200 if manager.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            dependencies=[Depends(require_info)], responses={401: {}, 403: {}})
async def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
