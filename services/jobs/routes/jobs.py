"""`/v1/jobs`: submit, list, inspect, read the logs of and stop jobs. RayJobs' calls block
(Ray's client uses requests), so they run in the thread pool. Bodies are typed both ways: the
request is admission's `JobRequest` (each spec's schema), the answers the models below."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from services.jobs.admission import JobRequest, admit
from services.jobs.deps import Authorized, Caller, JobsDep, SettingsDep
from services.jobs.ray_jobs import RayJobs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Authorized],
                   responses={401: {"description": "no bearer token"},
                              403: {"description": "a wrong bearer token"},
                              503: {"description": "Ray cluster unreachable"}})


class ModelVersion(BaseModel):
    """The registered model version an export job made."""

    model_name: str | None = None
    model_version: str | None = None
    model_uri: str | None = Field(None, description="models:/NAME/VERSION")
    alias: str | None = None


class Job(BaseModel):
    """One Waldo job on the cluster, as Ray and the server's MLflow know it."""

    id: str = Field(description="the job's id (its Ray submission id)")
    submission_id: str
    ray_job_id: str | None = None
    kind: str = Field(description="train, sweep or export")
    status: str = Field(description="Ray's: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED")
    message: str | None = None
    submitted_at: str | None = Field(None, description="ISO 8601, UTC")
    ended_at: str | None = Field(None, description="ISO 8601, UTC")
    duration_s: float | None = None
    spec: dict[str, Any] = Field(description="the spec as admitted (normalized paths, the server's "
                                             "defaults)")
    result: dict[str, Any] | None = Field(None, description="what a finished job reported")
    mlflow_run_id: str | None = None
    mlflow_run_url: str | None = None
    model: ModelVersion | None = None


class JobList(BaseModel):
    jobs: list[Job] = Field(description="newest first")


class StopAnswer(BaseModel):
    id: str
    stopped: bool = Field(description="whether a stop was asked of a running job")
    status: str


@router.post("", status_code=201, summary="Validate a spec and submit it to the Ray cluster",
             responses={413: {"description": "the body is over WALDO_JOBS_MAX_BODY_BYTES"},
                        422: {"description": "the spec names a bad field, a server-owned field "
                                             "(tracking_uri, ray_address), a path outside the "
                                             "allowed roots, or asks for more than the limits"}})
async def submit(body: JobRequest, jobs: JobsDep, settings: SettingsDep, by: Caller) -> Job:
    spec_data = await run_in_threadpool(admit, body.spec, settings)
    job_id = await run_in_threadpool(_submit, jobs, body.kind, spec_data, by)
    return Job.model_validate(await run_in_threadpool(jobs.get, job_id))


def _submit(jobs: RayJobs, kind: str, spec: dict[str, Any], by: str) -> str:
    if kind in ("train", "sweep") and not spec.get("run_name"):
        # A name of its own, so the API can find the MLflow run while the job runs.
        spec["run_name"] = f"job-{secrets.token_hex(4)}"
    return jobs.submit(kind, spec, by=by)


@router.get("", summary="Every Waldo job on the cluster, newest first")
async def list_jobs(jobs: JobsDep) -> JobList:
    return JobList(jobs=await run_in_threadpool(jobs.list))


@router.get("/{job_id}", summary="State, timings, MLflow run and registered model of one job",
            responses={404: {"description": "no Waldo job has this id"}})
async def get_job(job_id: str, jobs: JobsDep) -> Job:
    return Job.model_validate(await run_in_threadpool(jobs.get, job_id))


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
async def stop_job(job_id: str, jobs: JobsDep) -> StopAnswer:
    return StopAnswer.model_validate(await run_in_threadpool(jobs.stop, job_id))
