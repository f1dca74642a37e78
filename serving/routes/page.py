"""The web page at `/`: drop an image, see the label, the probabilities and the box."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(files("serving").joinpath("static/index.html").read_text(encoding="utf-8"))
