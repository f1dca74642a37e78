"""Pure ASGI middleware of the jobs API: the token check in front of everything under /v1
(RequireToken), and a whole-body read under serving's BodyLimit (ReadBody).

FastAPI reads and parses a JSON body before it runs a route's dependencies, so a dependency
would check the token only after a stranger's body had been read: 50 MB took 0.9 s and 680 MB
of memory before the 401. RequireToken checks the `Authorization` header (with httpapi.auth, the
inference service's check) before anything calls `receive`; a refused request that declared a
body is answered with `Connection: close`, so the server drops the connection rather than
draining a body nobody will read.
"""

from __future__ import annotations

from pydantic import SecretStr

from httpapi.auth import check_authorization
from httpapi.errors import ApiError, error_response


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _declares_body(scope) -> bool:
    length = _header(scope, b"content-length")
    return (length is not None and length.strip() not in ("", "0")) or \
        _header(scope, b"transfer-encoding") is not None


class RequireToken:
    """Refuse (401/403, in the shared error shape) every HTTP request under `prefix` that does not
    carry `Authorization: Bearer <token>`, without reading its body."""

    def __init__(self, app, token: SecretStr, prefix: str = "/v1"):
        self.app, self.token, self.prefix = app, token, prefix.rstrip("/")

    def _guarded(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self._guarded(scope["path"]):
            try:
                check_authorization(self.token, _header(scope, b"authorization"))
            except ApiError as exc:
                headers = dict(exc.headers or {})
                if _declares_body(scope):
                    headers["Connection"] = "close"
                response = error_response(exc.status, exc.code, exc.message, headers)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class ReadBody:
    """Read a request's whole body before the app does, and hand it on in one message.

    Under BodyLimit: a chunked body that grows past the limit then fails here, outside any route,
    and BodyLimit answers its 413 (FastAPI turns any error while it reads a body into a 400).
    What is held is at most the limit; FastAPI would hold the body anyway to parse it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        return await self.app(scope, replay, send)
