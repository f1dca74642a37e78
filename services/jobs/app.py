"""The jobs API: `uvicorn services.jobs.app:create_app --factory --port 8001`.

It validates specs with training.spec (the CLI's schema) and hands them to Ray Job Submission.
Every /v1 route needs the bearer token `WALDO_JOBS_TOKEN`; without one the app does not start.
Errors and the token check are the inference service's (serving.errors, serving.auth).
"""

from __future__ import annotations

from fastapi import FastAPI

from services.jobs import errors
from services.jobs.ray_jobs import RayJobs
from services.jobs.routes import health, jobs
from services.jobs.settings import JobsSettings, get_settings


def create_app(settings: JobsSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="Waldo jobs", version="0.1.0",
                  description="Submit train, sweep and export jobs to the Ray cluster.")
    app.state.settings = settings
    app.state.jobs = RayJobs(settings)
    errors.install(app)
    for router in (health.router, jobs.router):
        app.include_router(router)
    return app
