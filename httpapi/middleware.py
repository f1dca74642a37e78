"""Body size limit as pure ASGI middleware: it refuses by Content-Length before reading, and
counts the bytes of a chunked body as they arrive, so a huge upload never sits in memory."""

from __future__ import annotations

from httpapi.errors import ApiError, error_response


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, scope, receive, send, message: str) -> None:
        response = error_response(413, "too_large", message, {"connection": "close"}, scope.get("path", ""))
        await response(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size > limit:
                return await self._refuse(scope, receive, send,
                                          f"request body of {size} bytes exceeds the limit of {limit}")
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # raised inside the route: the app's handler answers 413
                    raise ApiError(413, "too_large", f"request body exceeds the limit of {limit} bytes")
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except ApiError as exc:  # read outside a route (e.g. by middleware)
            if not started:
                await self._refuse(scope, receive, send, exc.message)
