"""httpapi.server subclasses uvicorn's h11 protocol and reads its per-request state, which
is uvicorn's private API: pyproject.toml pins uvicorn to the releases this was tested with, and
these tests fail, fast and without a server, when a release changes what the Guard relies on:
the methods it overrides (and that uvicorn still calls them), the attributes it reads on the
protocol and on its RequestResponseCycle, and the Config it builds. The protocol is driven
through real requests on an in-memory transport."""

from __future__ import annotations

import asyncio
import inspect
import json

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle
from uvicorn.server import ServerState

from httpapi.server import ConnectionLimits, Guard, GuardedProtocol, connection_budget

# What GuardedProtocol overrides, with the parameters uvicorn calls it with.
OVERRIDDEN = {
    "connection_made": ["self", "transport"], "connection_lost": ["self", "exc"],
    "data_received": ["self", "data"], "eof_received": ["self"],
    "on_response_complete": ["self"], "send_400_response": ["self", "msg"],
}


def test_the_overridden_methods_keep_their_signatures_and_callers() -> None:
    for name, parameters in OVERRIDDEN.items():
        assert name in vars(H11Protocol), f"uvicorn's H11Protocol no longer defines {name}"
        assert list(inspect.signature(getattr(H11Protocol, name)).parameters) == parameters, name
        assert name in vars(GuardedProtocol), name
    source = inspect.getsource(H11Protocol)
    assert "self.send_400_response(" in source  # a malformed request still goes through it
    assert "on_response=self.on_response_complete" in source  # and a finished response here
    cycle = inspect.signature(RequestResponseCycle.__init__).parameters
    assert {"transport", "on_response"} <= set(cycle)


def test_config_takes_the_protocol_class_and_the_options_serve_passes() -> None:
    parameters = inspect.signature(uvicorn.Config.__init__).parameters
    assert {"http", "timeout_keep_alive", "backlog", "log_config", "log_level"} <= set(parameters)
    guard = Guard(ConnectionLimits())
    config = uvicorn.Config(_app, http=guard.protocol_class(), log_level="warning")
    config.load()
    assert config.http_protocol_class.guard is guard
    assert "default" in uvicorn.config.LOGGING_CONFIG["handlers"]
    assert isinstance(uvicorn.config.LOGGING_CONFIG["loggers"], dict)


class MemoryTransport(asyncio.Transport):
    """What a socket transport offers the protocol, in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.written, self.closed, self.eof, self.reading = bytearray(), False, False, True

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


async def _app(scope, receive, send) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _connect(guard: Guard) -> tuple[GuardedProtocol, MemoryTransport]:
    config = uvicorn.Config(_app, http=guard.protocol_class(), log_level="warning")
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={},
                                          _loop=asyncio.get_running_loop())
    transport = MemoryTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_the_guard_follows_a_request_through_uvicorns_state() -> None:
    async def scenario() -> None:
        guard = Guard(ConnectionLimits())
        protocol, transport = _connect(guard)
        assert protocol in guard.connections and protocol.client == ("127.0.0.1", 40000)
        assert protocol.transport._transport is transport  # uvicorn keeps the transport it was given
        assert protocol.cycle is None and protocol.state(0) == "idle"

        protocol.data_received(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n123")
        cycle = protocol.cycle
        assert isinstance(cycle, RequestResponseCycle)
        assert (cycle.more_body, cycle.disconnected, cycle.response_complete) == (True, False, False)
        assert protocol.state(0) == "body"

        protocol.data_received(b"4567890")
        await _settle()
        assert cycle.more_body is False and cycle.response_complete is True
        assert transport.written.startswith(b"HTTP/1.1 200")
        assert protocol.state(0) == "idle" and protocol.pending == 0  # on_response_complete ran

        protocol.connection_lost(None)
        assert protocol not in guard.connections

    asyncio.run(scenario())


def test_a_malformed_request_gets_the_json_400_through_send_400_response() -> None:
    async def scenario() -> None:
        protocol, transport = _connect(Guard(ConnectionLimits()))
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n")
        head, _, body = bytes(transport.written).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and json.loads(body)["error"]["code"] == "bad_request"
        assert transport.closed

    asyncio.run(scenario())


def test_closing_mid_body_becomes_a_lingering_close() -> None:
    """uvicorn closes the transport it holds (the Guard's wrapper) when a response ends while
    the body is still arriving: the wrapper sees `cycle.more_body` and drains instead."""

    async def scenario() -> None:
        protocol, transport = _connect(Guard(ConnectionLimits()))
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nxx")
        protocol.transport.close()
        assert transport.eof and not transport.closed and protocol.draining == 0
        assert protocol.state(0) == "draining"
        protocol.data_received(b"y" * 100)
        assert protocol.draining == 100

    asyncio.run(scenario())


def test_one_budget_splits_between_http_and_grpc(monkeypatch) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (512, 512))
    assert connection_budget(1024) == (384, 0)  # 512 files less the 128 kept for the rest
    assert connection_budget(1024, 128) == (336, 48)  # gRPC's share shrinks in proportion
    monkeypatch.setattr(resource, "getrlimit", lambda _: (resource.RLIM_INFINITY,) * 2)
    assert connection_budget(1024, 128) == (896, 128)


@pytest.mark.parametrize("grpc_port, share", [(None, 0), (9001, 128)])
def test_connection_limits_count_grpc_only_when_it_is_served(grpc_port, share) -> None:
    from serving.settings import Settings

    limits = ConnectionLimits.of(Settings(grpc_port=grpc_port))
    assert limits.grpc_connections == share and limits.max_connections == 1024
