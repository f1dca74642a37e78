"""In-process fakes of what the services talk to.

    FakeJobSubmission   the calls RayJobs makes of Ray's `JobSubmissionClient`, on Ray's own
                        `JobDetails`; `add` and `fail` set up jobs and failures
    waldo_meta(kind, **spec)   the metadata the jobs API gives a waldo job

This module imports Ray's job-submission SDK, so `support` exports its names lazily (only a
test that uses them pays for that import).
"""

from __future__ import annotations

import json
import time

from ray.job_submission import JobDetails, JobStatus, JobType

from services.jobs import ray_jobs

T0 = 1_700_000_000_000  # Ray's times are milliseconds since the epoch
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


class FakeJobSubmission:
    """The methods of `ray.job_submission.JobSubmissionClient` that RayJobs calls, in process.

    Jobs are Ray's own `JobDetails`; an unknown id fails as Ray's SDK does, with the
    RuntimeError it makes of the dashboard's HTTP 404. `fail(method, exc)` makes the next call
    of that method raise `exc`; `calls` records every call by method name, `submitted` the
    arguments of every submission by id."""

    def __init__(self):
        self.jobs: dict[str, JobDetails] = {}
        self.logs: dict[str, str] = {}
        self.calls: list[str] = []
        self.submitted: dict[str, dict] = {}
        self._failures: dict[str, list[Exception]] = {}

    # --- test helpers ---
    def add(self, submission_id: str, *, metadata: dict[str, str] | None, status=JobStatus.RUNNING,
            start: int = 0, end: int | None = None, logs: str = "") -> JobDetails:
        job = JobDetails(type=JobType.SUBMISSION, submission_id=submission_id, entrypoint="x",
                         status=status, metadata=metadata, start_time=T0 + start,
                         end_time=None if end is None else T0 + end, message=f"{status.value.lower()}")
        self.jobs[submission_id], self.logs[submission_id] = job, logs
        return job

    def fail(self, method: str, exc: Exception) -> None:
        self._failures.setdefault(method, []).append(exc)

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        if self._failures.get(method):
            raise self._failures[method].pop(0)

    def _job(self, job_id: str) -> JobDetails:
        if job_id not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
        return self.jobs[job_id]

    # --- JobSubmissionClient ---
    def submit_job(self, *, entrypoint: str, runtime_env=None, metadata=None, submission_id=None,
                   entrypoint_num_cpus=None) -> str:
        self._enter("submit_job")
        if submission_id in self.jobs:
            raise RuntimeError(f"Request failed with status code 400: Job with submission_id "
                               f"{submission_id} already exists.")
        job = JobDetails(type=JobType.SUBMISSION, submission_id=submission_id, entrypoint=entrypoint,
                         status=JobStatus.PENDING, metadata=metadata, runtime_env=runtime_env,
                         start_time=int(time.time() * 1000))
        self.submitted[submission_id] = {"entrypoint_num_cpus": entrypoint_num_cpus}
        self.jobs[submission_id], self.logs[submission_id] = job, ""
        return submission_id

    def list_jobs(self) -> list[JobDetails]:
        self._enter("list_jobs")
        return list(self.jobs.values())

    def get_job_info(self, job_id: str) -> JobDetails:
        self._enter("get_job_info")
        return self._job(job_id)

    def get_job_logs(self, job_id: str) -> str:
        self._enter("get_job_logs")
        self._job(job_id)
        return self.logs[job_id]

    def stop_job(self, job_id: str) -> bool:
        self._enter("stop_job")
        job = self._job(job_id)
        if job.status in TERMINAL:
            return False
        job.status = JobStatus.STOPPED
        return True


def waldo_meta(kind: str = "train", **spec) -> dict[str, str]:
    return {ray_jobs.META_KIND: kind, ray_jobs.META_SPEC: json.dumps(spec)}
