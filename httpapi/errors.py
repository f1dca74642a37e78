"""The HTTP error contract of both Waldo services (README: Security): `{"error": {"code": ...,
"message": ...}}` with a fitting status. Client mistakes are 4xx with a message naming the bad
value; nothing a client sends becomes a 500.

The inference service and the jobs API both call `install`; a service maps its own exceptions
onto the contract by passing `translations` (the jobs API's unknown job becomes 404
`unknown_job`). This module needs only fastapi and starlette, so services may import it.
"""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Callable, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect


class ApiError(Exception):
    """An error a route means to send: its status, a stable machine code and a message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


# A service's own exception -> the ApiError it stands for (the request gives context, e.g. an id).
Translation = Callable[[Request, Exception], ApiError]

# Codes for errors raised as plain HTTP statuses (FastAPI's own 404/405, HTTPException).
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 413: "too_large",
              415: "unsupported_media_type", 422: "invalid_input", 429: "too_many_requests",
              500: "internal", 503: "unavailable", 504: "timeout"}


def code_for(status: int) -> str:
    return HTTP_CODES.get(status, "error")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 8, 8, 4
_SHORT.maxstring = _SHORT.maxother = 64


def shown(value: object, limit: int = 64) -> str:
    """Client text (a model, input or output name, a version, an id, a shape) as a message
    echoes it: its repr, cut to `limit` characters with the full length said. A 1 MB model name
    echoed whole would turn a 404 into a 1 MB answer, and over gRPC into a failure to send the
    status at all (its message travels in 8 KiB of metadata)."""
    if isinstance(value, str | bytes):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value)} {'characters' if isinstance(value, str) else 'bytes'})"
    return _SHORT.repr(value)  # lists and the rest: reprlib cuts them at every level


# The Open Inference Protocol has its own error shape: `{"error": "<message>"}`.
V2_PREFIX = "/v2"


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   path: str = ""):
    """The error contract's body; under /v2 the protocol's `{"error": message}`."""
    v2 = path == V2_PREFIX or path.startswith(V2_PREFIX + "/")
    body = {"error": message} if v2 else {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _where(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install(app: FastAPI, translations: Mapping[type[Exception], Translation] | None = None, *,
            logger: str = "waldo.serving") -> None:
    """Answer every error of `app` in the contract's shape; unexpected ones are logged, with
    their traceback, to `logger`."""
    log = logging.getLogger(logger)

    def _send(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers, request.url.path)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _send(request, exc)

    for exc_type, translate in (translations or {}).items():
        async def _translated(request: Request, exc: Exception, translate=translate):
            return _send(request, translate(request, exc))

        app.add_exception_handler(exc_type, _translated)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = [f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
        return error_response(422, "invalid_input", "; ".join(problems), path=request.url.path)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect):  # closed mid-body (or timed out)
        log.info("%s %s: the client went away before its body arrived", request.method, request.url.path)
        return error_response(400, "client_disconnected", "the connection closed before the body arrived",
                              path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(exc.status_code, code_for(exc.status_code), message,
                              getattr(exc, "headers", None), request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # a bug of ours, never the client's
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); see the service log",
                              path=request.url.path)
