"""`/v1/jobs`: submit, list, inspect, read the logs of and stop jobs. RayJobs' calls block
(Ray's client uses requests), so they run in the thread pool."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from services.jobs.deps import Authorized, JobsDep, SettingsDep
from services.jobs.ray_jobs import RayJobs
from serving.errors import ApiError
from training.spec import JOB_SPECS, format_validation_error

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Authorized],
                   responses={401: {"description": "no bearer token"},
                              403: {"description": "a wrong bearer token"},
                              503: {"description": "Ray cluster unreachable"}})


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["train", "sweep", "export"]
    spec: dict[str, Any] = Field(description="a TrainSpec, SweepSpec or ExportSpec, as `waldo` takes them")


@router.post("", status_code=201, summary="Validate a spec and submit it to the Ray cluster",
             responses={422: {"description": "the spec names a bad field"}})
async def submit(body: JobRequest, jobs: JobsDep, settings: SettingsDep) -> dict:
    spec_cls = JOB_SPECS[body.kind]
    data = dict(body.spec)
    if body.kind != "export":
        data.setdefault("progress_bar", False)  # logs, not a terminal
    if settings.tracking_uri and not data.get("tracking_uri"):
        data["tracking_uri"] = settings.tracking_uri
    if settings.storage and body.kind != "export" and not data.get("storage"):
        data["storage"] = settings.storage
    try:
        spec = spec_cls.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_spec", format_validation_error(exc, spec_cls)) from None
    spec_data = spec.model_dump(mode="json", exclude_unset=True)
    job_id = await run_in_threadpool(_submit, jobs, body.kind, spec_data)
    return await run_in_threadpool(jobs.get, job_id)


def _submit(jobs: RayJobs, kind: str, spec: dict[str, Any]) -> str:
    if kind in ("train", "sweep") and not spec.get("run_name"):
        # A name of its own, so the API can find the MLflow run while the job runs.
        spec["run_name"] = f"job-{secrets.token_hex(4)}"
    return jobs.submit(kind, spec)


@router.get("", summary="Every Waldo job on the cluster, newest first")
async def list_jobs(jobs: JobsDep) -> dict:
    return {"jobs": await run_in_threadpool(jobs.list)}


@router.get("/{job_id}", summary="State, timings, MLflow run and registered model of one job",
            responses={404: {"description": "no Waldo job has this id"}})
async def get_job(job_id: str, jobs: JobsDep) -> dict:
    return await run_in_threadpool(jobs.get, job_id)


@router.get("/{job_id}/logs", response_class=PlainTextResponse, summary="The job's output so far",
            responses={404: {"description": "no Waldo job has this id"}})
async def job_logs(job_id: str, jobs: JobsDep,
                   tail: Annotated[int | None, Query(ge=1, le=100_000, description="last N lines")] = None):
    text = await run_in_threadpool(jobs.logs, job_id)
    if tail is not None:
        text = "\n".join(text.splitlines()[-tail:])
    return PlainTextResponse(text)


@router.delete("/{job_id}", summary="Stop a job",
               responses={404: {"description": "no Waldo job has this id"}})
async def stop_job(job_id: str, jobs: JobsDep) -> dict:
    return await run_in_threadpool(jobs.stop, job_id)
