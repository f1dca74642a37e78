"""The web page at `/` (static/index.html) and its script at `/page.js`: drop an image or draw a
digit, see the label, the probabilities, the box, what the model looks at and image kernels."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)


def _static(name: str) -> str:
    return files("serving").joinpath("static", name).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(_static("index.html"))


@router.get("/page.js")
async def script() -> Response:
    return Response(_static("page.js"), media_type="text/javascript")
