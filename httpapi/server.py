"""The HTTP server of both Waldo services: uvicorn, with the connection limits it lacks.

uvicorn (h11) closes a keep-alive connection that stays idle between requests, but nothing else:
a client that connects and sends nothing, sends half its headers, or trickles its body a byte a
second holds its connection (and a file descriptor) forever, and a few thousand of them starve
the process. uvicorn's `limit_concurrency` answers 503 once the count is reached, health checks
included, and keeps the idle connections open. So `serve()` runs uvicorn with its own protocol
class, the h11 protocol plus a `Guard` that:

- closes a connection whose request headers are not complete `header_timeout_s` after it
  opened (or after its previous response), and one whose body has not fully arrived
  `body_timeout_s` after its headers: one log line each, no traceback;
- caps open connections at `max_connections`, lowered to fit the process's open-file limit: at
  the cap, a new connection closes the oldest idle one (connected, no request in progress), as
  nginx reuses idle keep-alive connections, so a flood of idle sockets never locks out
  `/healthz`; when none is idle, the newcomer gets a 503;
- answers protocol errors (a malformed request line, header or `Content-Length`) with the
  services' JSON error, not uvicorn's plain text;
- closes a connection whose request body was refused (413) the way nginx's lingering close
  does: the response is flushed and the write side shut, then up to `drain_bytes` of the body
  are read and discarded, so a client that writes its whole body before reading (`requests`,
  `http.client`) reads the 413 instead of a connection reset.

Repeated identical log lines (a flood of bad requests, `accept()` out of file descriptors) are
rate-limited by `RateLimitFilter`.

One budget of connections covers both front ends of the inference service: `max_connections`,
lowered to fit the open-file limit, less the share gRPC keeps (`connection_budget`). grpcio's
core accepts and owns the gRPC sockets, out of Python's sight, so the gRPC share is enforced
by the core itself through channel arguments (`serving.v2.grpc.connection_options`):
`grpc.max_allowed_incoming_connections` closes a gRPC connection past the share as soon as it
is accepted, and `grpc.server_handshake_timeout_ms` (the header timeout) closes one that has not
sent its HTTP/2 preface and SETTINGS by then, so silent or preface-only connections free their
slot as an HTTP connection without headers does. Together the two caps fit the file limit, and
a gRPC flood cannot take the files `/healthz` needs. The alternative, an asyncio TCP proxy in
front of gRPC that the Guard would count, was not taken: it copies every byte through Python
(latency on every call) and holds three descriptors per gRPC connection instead of one, while
the core's two arguments bound what a flood can hold at the same place (measured in
bench/serving_limits.py: `/healthz` stays fast under 600 idle gRPC connections with 512 files).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import resource
import time
from dataclasses import dataclass

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("waldo.http")

# File descriptors kept for everything that is not a client connection: the listening socket,
# model files, logs, ONNX Runtime, the MLflow client, and accept() bursts racing the closes.
RESERVED_FDS = 128
SWEEP_INTERVAL_S = 0.25
DRAIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keepalive_timeout_s: float = 5.0
    max_connections: int = 1024
    drain_bytes: int = 64 * 2**20
    grpc_connections: int = 0  # the part of max_connections a gRPC front end keeps (0: none)

    @classmethod
    def of(cls, settings) -> ConnectionLimits:
        """The limits from a settings object with fields of the same names; gRPC's share is its
        `grpc_max_connections` when it serves gRPC (`grpc_port` set)."""
        grpc = settings.grpc_max_connections if getattr(settings, "grpc_port", None) else 0
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__
                      if name != "grpc_connections"}, grpc_connections=grpc)


def connection_cap(wanted: int, reserved: int = RESERVED_FDS) -> int:
    """`wanted`, lowered so that the connections fit the open-file limit (RLIMIT_NOFILE)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = soft - reserved if soft > 2 * reserved else soft // 2
    return max(1, min(wanted, room))


def connection_budget(max_connections: int, grpc_connections: int = 0) -> tuple[int, int]:
    """(HTTP's cap, gRPC's cap): one budget of `max_connections` for both front ends, lowered
    to fit the open-file limit, of which gRPC keeps `grpc_connections` (scaled down with it)."""
    total = connection_cap(max_connections)
    if grpc_connections <= 0:
        return total, 0
    grpc = max(1, grpc_connections * total // max_connections)
    return max(1, total - grpc), grpc


def _json_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


class _DrainingTransport:
    """The connection's transport as uvicorn sees it: `close()` while a request body is still
    arriving turns into a lingering close (flush, shut the write side, discard the rest)."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedProtocol):
        self._transport, self._protocol = transport, protocol

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._protocol.draining is not None or self._transport.is_closing()

    def close(self) -> None:
        protocol, transport = self._protocol, self._transport
        cycle = protocol.cycle
        body_left = cycle is not None and cycle.more_body and not cycle.disconnected
        if (protocol.draining is None and body_left and protocol.guard.limits.drain_bytes > 0
                and not transport.is_closing() and transport.can_write_eof()):
            protocol.draining = 0
            protocol.phase, protocol.since = "draining", time.monotonic()
            transport.write_eof()  # sends what is buffered (the response), then FIN
            transport.resume_reading()
            return
        transport.close()


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol under a `Guard` (set on the subclass that `serve()` makes)."""

    guard: Guard

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.draining: int | None = None  # bytes discarded since a lingering close began
        self.phase, self.since, self.pending = "idle", time.monotonic(), 0
        super().connection_made(_DrainingTransport(transport, self))
        self.guard.admit(self)

    def connection_lost(self, exc) -> None:
        self.guard.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.draining is not None:
            self.draining += len(data)
            if self.draining > self.guard.limits.drain_bytes:
                self.transport._transport.close()
            return
        if self.phase == "idle":
            self.phase = "headers"
        self.pending += len(data)
        super().data_received(data)

    def eof_received(self) -> bool | None:
        if self.draining is not None:
            self.transport._transport.close()
        return super().eof_received()

    def on_response_complete(self) -> None:
        self.phase, self.since, self.pending = "idle", time.monotonic(), 0
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_json_response(
            400, "Bad Request", "bad_request",
            "malformed HTTP request: check the request line, the headers and Content-Length"))
        self.transport._transport.close()

    def state(self, now: float) -> str:
        """idle | headers | body | app | draining, and since when (updated as a side effect)."""
        if self.draining is not None:
            return "draining"
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            phase = "headers" if self.pending else "idle"
        elif cycle.more_body and not cycle.disconnected:
            phase = "body"
        else:
            phase = "app"
        if phase in ("body", "app") and self.phase not in ("body", "app"):
            self.since = now  # a request began: the body's clock starts
        if phase != self.phase:
            self.phase = phase
        return phase


class Guard:
    """Every open connection of one server, its deadlines, and the connection cap."""

    def __init__(self, limits: ConnectionLimits):
        self.limits = limits
        self.cap, self.grpc_cap = connection_budget(limits.max_connections, limits.grpc_connections)
        self.connections: dict[GuardedProtocol, None] = {}  # oldest first

    def protocol_class(self) -> type[GuardedProtocol]:
        return type("WaldoHTTPProtocol", (GuardedProtocol,), {"guard": self})

    def admit(self, protocol: GuardedProtocol) -> None:
        if len(self.connections) >= self.cap:
            now = time.monotonic()
            idle = next((p for p in self.connections if p.state(now) == "idle"), None)
            if idle is None:
                log.warning("connection cap (%d) reached and no connection is idle: refused one", self.cap)
                protocol.transport.write(_json_response(
                    503, "Service Unavailable", "unavailable",
                    f"the server holds its maximum of {self.cap} connections; retry shortly"))
                protocol.transport._transport.close()
                return
            log.warning("connection cap (%d) reached: closed the oldest idle connection", self.cap)
            self._close(idle)
        self.connections[protocol] = None

    def forget(self, protocol: GuardedProtocol) -> None:
        self.connections.pop(protocol, None)

    def _close(self, protocol: GuardedProtocol) -> None:
        self.connections.pop(protocol, None)
        protocol.transport._transport.close()

    def sweep(self) -> None:
        """Close every connection past its deadline."""
        now, limits = time.monotonic(), self.limits
        deadlines = {"idle": limits.header_timeout_s, "headers": limits.header_timeout_s,
                     "body": limits.body_timeout_s, "draining": DRAIN_TIMEOUT_S}
        for protocol in list(self.connections):
            phase = protocol.state(now)
            limit = deadlines.get(phase)
            if limit is None or now - protocol.since < limit:
                continue
            if phase in ("headers", "body"):
                peer = "{}:{}".format(*protocol.client) if protocol.client else "a client"
                what = "its request headers" if phase == "headers" else "its request body"
                log.warning("closed the connection from %s: %s did not arrive within %g s",
                            peer, what, limit)
            self._close(protocol)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.sweep()


class RateLimitFilter(logging.Filter):
    """Pass the first `burst` records with the same logger, level and message template in each
    `window_s`; count the rest and say how many were dropped when the next one passes."""

    def __init__(self, burst: int = 5, window_s: float = 60.0):
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self._seen: dict[tuple, list] = {}  # key -> [window start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window_s:
            dropped = entry[2] if entry else 0
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.msg} (and {dropped} more like it in the last {self.window_s:g} s)"
            return True
        if entry[1] < self.burst:
            entry[1] += 1
            return True
        entry[2] += 1
        return False


class OneLineAcceptErrors(logging.Filter):
    """asyncio logs an `accept()` that ran out of file descriptors (EMFILE, in a burst of
    connections before the cap has closed idle ones) with a traceback; it retries by itself a
    second later. One line says the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("socket.accept() out of system resource") and record.exc_info:
            exc = record.exc_info[1]
            record.msg, record.args = "accept() failed (%s); retrying in 1 s", (exc,)
            record.exc_info = record.exc_text = None
        return True


# Logger filters see only their own logger's records, not its children's: every name is listed.
RATE_LIMITED_LOGGERS = ("uvicorn.error", "asyncio", "waldo.http", "waldo.serving", "waldo.jobs")


def install_log_rate_limit(filter_: logging.Filter | None = None) -> logging.Filter:
    filter_ = filter_ or RateLimitFilter()
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, OneLineAcceptErrors) for f in asyncio_log.filters):
        asyncio_log.addFilter(OneLineAcceptErrors())  # before the rate limit, which keys on the text
    for name in RATE_LIMITED_LOGGERS:
        logger = logging.getLogger(name)
        if filter_ not in logger.filters:
            logger.addFilter(filter_)
    return filter_


def serve(app, *, host: str, port: int, limits: ConnectionLimits, log_level: str = "info") -> None:
    """Run `app` on uvicorn under the connection `limits` until interrupted."""
    guard = Guard(limits)
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)  # Waldo's loggers print like uvicorn's
    log_config["loggers"]["waldo"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, log_config=log_config,
                            http=guard.protocol_class(),
                            timeout_keep_alive=limits.keepalive_timeout_s,  # type: ignore[arg-type]
                            backlog=min(2048, max(64, guard.cap // 2)))
    server = uvicorn.Server(config)
    install_log_rate_limit()
    log.info("connections: at most %d open (HTTP %d, gRPC %d); headers within %g s, bodies within %g s",
             guard.cap + guard.grpc_cap, guard.cap, guard.grpc_cap, limits.header_timeout_s,
             limits.body_timeout_s)

    async def main() -> None:
        sweeper = asyncio.create_task(guard.run())
        try:
            await server.serve()
        finally:
            sweeper.cancel()

    asyncio.run(main())
