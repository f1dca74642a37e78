"""/docs (Swagger UI) and /redoc (ReDoc) with their JavaScript and CSS served by the app itself.

FastAPI's own docs pages load Swagger UI and ReDoc from a CDN, so without a network (a cluster
node, an air-gapped machine) they stay blank. `install_docs` adds the two pages as FastAPI's
documentation does for self-hosting them, with the files under `/docs-assets`, taken from the
installed `fastapi-offline` package: it ships Swagger UI 5 (the first that renders OpenAPI 3.1,
which FastAPI writes) and ReDoc's standalone bundle. The app is made with `docs_url=None,
redoc_url=None`; both services call this. The one outside request left is ReDoc's: the Redocly
logo at the foot of its sidebar, which it drops when the logo does not load.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.params import Depends
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSETS_PACKAGE = "fastapi_offline"  # the PyPI package fastapi-offline; only its static/ is used


def assets_folder() -> Path:
    """The installed folder holding swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
    and favicon.png (found without importing the package)."""
    spec = find_spec(ASSETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the docs' JavaScript comes from the {ASSETS_PACKAGE} package, which is "
                           "not installed: pip install fastapi-offline")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def install_docs(app: FastAPI, dependencies: Sequence[Depends] = ()) -> None:
    """Add /docs, /redoc and `ASSETS_URL` to `app`. With `dependencies` (a key check), the two
    pages and /openapi.json are behind them, as FastAPI's documentation does it for docs behind a
    login: make the app with `openapi_url=None` too, and this adds /openapi.json itself. The
    assets stay open: they are Swagger UI's and ReDoc's own files, nothing of the service."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_folder()), name="docs-assets")
    guard = list(dependencies)
    if guard:
        @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
        async def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

    schema = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy, as FastAPI's own
        return get_swagger_ui_html(
            openapi_url=root + schema, title=f"{app.title} - docs",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters)

    @app.get("/redoc", include_in_schema=False, dependencies=guard)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=root + schema, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False)
