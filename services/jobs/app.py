"""The jobs API: `python -m services.jobs --port 8001` (services/jobs/__main__.py).

It admits specs (admission.py: training.spec's schema, then the operator's roots and bounds)
and hands them to Ray Job Submission. Every /v1 request needs the bearer token
`WALDO_JOBS_TOKEN`, checked before its body is read (middleware.py), and a body of at most
`WALDO_JOBS_MAX_BODY_BYTES`; without a token the app does not start. Errors and the token check
are the inference service's (httpapi.errors, httpapi.auth).
"""

from __future__ import annotations

import sys

from fastapi import FastAPI
from pydantic import ValidationError

from httpapi.docs import install_docs
from httpapi.middleware import BodyLimit
from services.jobs import errors
from services.jobs.middleware import ReadBody, RequireToken
from services.jobs.ray_jobs import RayJobs
from services.jobs.routes import health, jobs, models
from services.jobs.settings import JobsSettings, error_line, get_settings


def create_app(settings: JobsSettings | None = None) -> FastAPI:
    """The app for `settings`, or for the environment's settings: when those do not validate
    (e.g. under `uvicorn --factory`), one line on stderr and exit status 2, not a traceback."""
    if settings is None:
        try:
            settings = get_settings()
        except ValidationError as exc:
            print(error_line(exc), file=sys.stderr)
            raise SystemExit(2) from None
    app = FastAPI(title="Waldo jobs", version="0.1.0", docs_url=None, redoc_url=None,
                  description="Submit train, sweep and export jobs to the Ray cluster; read a "
                  "registered model's alias history, roll it back, and set its rollout policy.")
    app.state.settings = settings
    app.state.jobs = RayJobs(settings)
    errors.install(app)
    for router in (health.router, jobs.router, models.router):
        app.include_router(router)
    install_docs(app)  # /docs and /redoc with their JavaScript served from the app, not a CDN
    # The last added runs first: the token is checked before BodyLimit counts a byte, and
    # ReadBody reads what BodyLimit lets through before FastAPI does.
    app.add_middleware(ReadBody)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequireToken, token=settings.token)
    return app
