"""The inference service: `create_app()` builds it, its lifespan loads the models.

    uvicorn serving.app:create_app --factory      # settings from WALDO_* variables
    waldo serve --models ./models --port 8000      # the same, with flags

Importing this module does nothing heavy; onnxruntime is imported when the first model loads.
"""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from httpapi import errors
from httpapi.docs import install_docs
from httpapi.middleware import BodyLimit
from serving.deps import require_info
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.routes import explain, health, models, page, predict, v2
from serving.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manager = app.state.manager
        await manager.start()
        # Everything loaded so far (the web stack, ONNX Runtime, the models) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it, which cut
        # the p99 latency under load (bench/serving_compare.py).
        gc.collect()
        gc.freeze()
        grpc_server = None
        try:
            if settings.grpc_port is not None:  # grpc is imported only when it is asked for
                from serving.v2 import grpc as grpc_front

                grpc_server = await grpc_front.start(manager, settings)
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=2)
            await manager.stop()

    # /docs and /redoc are install_docs' (their JavaScript from the app, not FastAPI's CDN).
    docs = {"docs_url": None, "redoc_url": None}
    if settings.protect_info:
        docs["openapi_url"] = None
    app = FastAPI(title="Waldo inference", version="0.1.0", lifespan=lifespan,
                  description="Classify and localize images with Waldo's ONNX models.", **docs)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.manager = ModelManager(settings, app.state.metrics)
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    for router in (health.router, models.router, predict.router, explain.router, v2.router,
                   page.router):
        app.include_router(router)
    # With protect_info, /openapi.json, /docs and /redoc are behind `require_info`. A browser
    # does not send a bearer token when Swagger UI fetches the schema: tools fetch /openapi.json
    # with the key instead.
    install_docs(app, [Depends(require_info)] if settings.protect_info else ())
    return app
