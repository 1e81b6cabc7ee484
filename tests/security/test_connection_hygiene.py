"""Connection hygiene of the routers' HTTP servers (``proxy_router.netguard``).

Real servers on loopback free ports, spoken to over raw sockets so a test can
hold a connection open, stop mid-request or trickle a body like an attacker.
Deadlines are short (0.5 s) and asserted only as "closed within a generous
bound", never to the millisecond.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from proxy_router.consumer.access import AccessPolicy
from proxy_router.consumer.api import ConsumerApi
from proxy_router.consumer.chat import ChatService
from proxy_router.metrics import Metrics
from proxy_router.netguard import (
    ConnectionGuard,
    ConnectionLimits,
    guard_of,
    read_body,
    remote_key,
    serve_app,
)
from tests.consumer.conftest import FakeSessions, consumer_settings

BOUND_S = 10.0  # "closed in time" means within this, whatever the machine's load
SHORT_S = 0.5
LONG_S = 60.0

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Serve = Callable[..., Awaitable[tuple[int, ConnectionGuard]]]
Connect = Callable[..., Awaitable[Conn]]


def limits(**kw: Any) -> ConnectionLimits:
    """Limits whose timers stay out of the way unless a test shortens one."""
    base: dict[str, Any] = {"header_timeout_s": LONG_S, "keepalive_timeout_s": LONG_S,
                            "body_timeout_s": LONG_S,
                            "exempt_loopback": False}  # the tests' peers are all loopback
    return ConnectionLimits(**{**base, **kw})


def plain_app(body_timeout_s: float = LONG_S) -> web.Application:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(text="slow")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await read_body(request, body_timeout_s))

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/slow", slow)
    app.router.add_post("/echo", echo)
    return app


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start apps with ``serve_app`` on free ports; all are cleaned up after the test."""
    runners: list[web.AppRunner] = []

    async def start(lim: ConnectionLimits, app: web.Application | None = None
                    ) -> tuple[int, ConnectionGuard]:
        runner, port = await serve_app(app or plain_app(), "127.0.0.1", 0, lim)
        runners.append(runner)
        guard = guard_of(runner)
        assert guard is not None and port != 0
        return port, guard

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open raw client sockets; whatever is still open is closed after the test."""
    writers: list[asyncio.StreamWriter] = []

    async def open_(port: int, source: str = "127.0.0.1") -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(source, 0))
        writers.append(writer)
        return reader, writer

    yield open_
    for writer in writers:
        writer.close()


async def response(conn: Conn, raw: bytes) -> tuple[int, bytes]:
    """Send ``raw`` and read one response: its status and body."""
    reader, writer = conn
    writer.write(raw)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await asyncio.wait_for(reader.readexactly(length), BOUND_S)


async def get(conn: Conn, path: str = "/") -> tuple[int, bytes]:
    return await response(conn, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())


async def closed_by_server(conn: Conn, within: float = BOUND_S) -> bytes:
    """Wait for the server to close ``conn``; returns whatever it sent first."""
    try:
        return await asyncio.wait_for(conn[0].read(), within)
    except ConnectionResetError:
        return b""


async def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.02)


def openai_error(body: bytes) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return cast(dict[str, Any], error)


# -- caps ------------------------------------------------------------------------------------


async def test_a_remote_over_its_cap_is_refused_while_its_other_connections_live(
        serve: Serve, connect: Connect) -> None:
    port, guard = await serve(limits(max_per_remote=3))
    held = [await connect(port) for _ in range(3)]
    await eventually(lambda: guard.per_remote == {"127.0.0.1": 3}, "3 connections counted")

    extra = await connect(port)
    assert await closed_by_server(extra) == b""
    assert guard.refused_per_remote == 1
    for conn in held:
        assert await get(conn) == (200, b"ok")
    assert guard.per_remote == {"127.0.0.1": 3}


async def test_closing_connections_frees_the_remotes_slots_and_empties_the_map(
        serve: Serve, connect: Connect) -> None:
    port, guard = await serve(limits(max_per_remote=2))
    first, second = await connect(port), await connect(port)
    await eventually(lambda: guard.per_remote == {"127.0.0.1": 2}, "2 connections counted")
    first[1].close()
    await eventually(lambda: guard.per_remote == {"127.0.0.1": 1}, "a closed one uncounted")

    again = await connect(port)
    assert await get(again) == (200, b"ok")
    for _, writer in (second, again):
        writer.close()
    await eventually(lambda: guard.per_remote == {}, "no entry left once all closed")
    assert guard.open_connections == 0 and guard.refused_per_remote == 0


async def test_the_total_cap_holds_across_remotes(serve: Serve, connect: Connect) -> None:
    port, guard = await serve(limits(max_per_remote=2, max_total=3))
    held = [await connect(port, "127.0.0.1"), await connect(port, "127.0.0.1"),
            await connect(port, "127.0.0.2")]
    await eventually(lambda: guard.open_connections == 3, "3 connections counted")
    assert guard.per_remote == {"127.0.0.1": 2, "127.0.0.2": 1}

    newcomer = await connect(port, "127.0.0.3")  # under its own cap, over the total
    assert await closed_by_server(newcomer) == b""
    assert guard.refused_total == 1 and guard.refused_per_remote == 0
    for conn in held:
        assert await get(conn) == (200, b"ok")

    held[0][1].close()
    await eventually(lambda: guard.open_connections == 2, "a closed one uncounted")
    assert await get(await connect(port, "127.0.0.3")) == (200, b"ok")


async def test_loopback_peers_are_exempt_from_the_per_ip_cap_not_from_the_total(
        serve: Serve, connect: Connect) -> None:
    port, guard = await serve(limits(max_per_remote=2, max_total=4, exempt_loopback=True))
    held = [await connect(port) for _ in range(4)]  # twice the per-IP cap, from 127.0.0.1
    await eventually(lambda: guard.per_remote == {"127.0.0.1": 4}, "4 connections counted")
    for conn in held:
        assert await get(conn) == (200, b"ok")
    assert guard.refused_per_remote == 0

    over = await connect(port)
    assert await closed_by_server(over) == b""
    assert guard.refused() == {"max_per_remote": 0, "max_total": 1}


def test_only_loopback_addresses_are_exempt() -> None:
    lim = ConnectionLimits(max_per_remote=1)
    assert not lim.over_per_remote("127.0.0.1", 5) and not lim.over_per_remote("::1", 5)
    assert lim.over_per_remote("203.0.113.7", 1) and lim.over_per_remote("", 1)
    assert not lim.over_per_remote("203.0.113.7", 0)
    assert ConnectionLimits(max_per_remote=1, exempt_loopback=False).over_per_remote(
        "127.0.0.1", 1)


async def test_refusals_are_counted_in_metrics_and_logged(
        serve: Serve, connect: Connect) -> None:
    from structlog.testing import capture_logs

    from proxy_router.metrics import Metrics
    port, guard = await serve(limits(max_per_remote=1))
    metrics = Metrics("provider")
    metrics.watch_connection_guard(guard.refused)
    held = await connect(port)
    await eventually(lambda: guard.open_connections == 1, "1 connection counted")
    with capture_logs() as logs:
        for _ in range(2):
            assert await closed_by_server(await connect(port)) == b""
    assert metrics.registry.get_sample_value(
        "proxy_router_http_connections_refused_total", {"cap": "max_per_remote"}) == 2
    warned = [e for e in logs if e["event"] == "http_connection_cap_reached"]
    assert len(warned) == 1, "rate-limited: one warning for the two refusals"
    assert warned[0]["cap"] == "max_per_remote"
    assert await get(held) == (200, b"ok")


# -- header and keep-alive deadlines ----------------------------------------------------------


async def test_a_half_sent_first_request_is_closed_after_the_header_timeout(
        serve: Serve, connect: Connect) -> None:
    port, guard = await serve(limits(header_timeout_s=SHORT_S))  # keep-alive timer: 60 s
    conn = await connect(port)
    conn[1].write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    assert await closed_by_server(conn) == b""
    assert guard.header_timeouts == 1
    await eventually(lambda: guard.per_remote == {}, "the closed connection uncounted")


async def test_a_connection_that_sends_nothing_is_closed(serve: Serve,
                                                         connect: Connect) -> None:
    port, guard = await serve(limits(header_timeout_s=SHORT_S))
    assert await closed_by_server(await connect(port)) == b""
    assert guard.header_timeouts == 1


async def test_a_request_whose_headers_arrived_in_time_is_not_cut_by_the_header_deadline(
        serve: Serve, connect: Connect) -> None:
    port, guard = await serve(limits(header_timeout_s=0.2))
    assert await get(await connect(port), "/slow") == (200, b"slow")  # handler takes 1 s
    assert guard.header_timeouts == 0


async def test_a_half_sent_request_on_a_keepalive_connection_is_closed_after_the_idle_timeout(
        serve: Serve, connect: Connect) -> None:
    port, guard = await serve(limits(keepalive_timeout_s=SHORT_S))  # header timer: 60 s
    conn = await connect(port)
    assert await get(conn) == (200, b"ok")
    conn[1].write(b"GET / HTTP/1.1\r\nHo")
    assert await closed_by_server(conn) == b""
    assert guard.header_timeouts == 0  # aiohttp's keep-alive timer closed it


async def test_a_slowly_uploaded_body_gets_408(serve: Serve, connect: Connect) -> None:
    port, _ = await serve(limits(), plain_app(body_timeout_s=SHORT_S))
    conn = await connect(port)
    status, _ = await response(conn, b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                     b"Content-Length: 100\r\n\r\n0123456789")
    assert status == 408
    assert await response(await connect(port), b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                               b"Content-Length: 4\r\n\r\nabcd") == (200, b"abcd")


# -- the consumer app -------------------------------------------------------------------------


@pytest.fixture
async def consumer(serve: Serve, tmp_path: Path) -> int:
    """The real consumer app over the fakes of ``tests/consumer``, served by ``serve_app``."""
    sessions = FakeSessions()
    metrics = Metrics("consumer")
    chat = ChatService(cast(Any, sessions), cast(Any, sessions.index), session_duration=600,
                       failover=True, first_token_timeout=5, metrics=metrics)
    api = ConsumerApi(cast(Any, sessions), chat, metrics=metrics, body_timeout_s=SHORT_S,
                      access=AccessPolicy.from_settings(consumer_settings(tmp_path)))
    port, _ = await serve(limits(), api.app())
    return port


@pytest.mark.parametrize("name", ["a%00b", "%00", "a" * 5000])
async def test_a_malformed_static_file_name_is_a_400_invalid_path(
        consumer: int, connect: Connect, name: str) -> None:
    status, body = await get(await connect(consumer), f"/static/{name}")
    assert status == 400
    assert openai_error(body)["code"] == "invalid_path"


@pytest.mark.parametrize("name", ["a%01b", "a%7Fb"])
async def test_a_static_file_name_with_other_control_characters_is_a_404(
        consumer: int, connect: Connect, name: str) -> None:
    """Legal in a path, but no file of the web app has one: not found, never a 500."""
    status, body = await get(await connect(consumer), f"/static/{name}")
    assert status == 404
    assert openai_error(body)["code"] == "not_found"


@pytest.mark.parametrize("path", ["/%00", "/v1/models%00", "/blockchain/models/a%00b/bids",
                                  "/blockchain/sessions/%00", "/blockchain/bids?modelId=%00"])
async def test_a_nul_escape_anywhere_in_the_consumer_is_a_client_error(
        consumer: int, connect: Connect, path: str) -> None:
    status, body = await get(await connect(consumer), path)
    assert status in (400, 404)
    openai_error(body)


async def test_a_raw_nul_in_the_request_line_is_a_400(consumer: int, connect: Connect) -> None:
    # Refused by aiohttp's HTTP parser, before the app: plain text, not the app's JSON.
    status, _ = await get(await connect(consumer), "/static/a\x00b")
    assert status == 400


async def test_the_consumer_answers_a_slowly_uploaded_chat_body_with_408(
        consumer: int, connect: Connect) -> None:
    status, body = await response(
        await connect(consumer),
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{consumer}\r\n"
        "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\":".encode())
    assert status == 408
    assert openai_error(body)["message"] == "Request Timeout"


# -- configuration ---------------------------------------------------------------------------


def test_limits_come_from_the_settings(tmp_path: Path) -> None:
    settings = consumer_settings(tmp_path, max_connections_per_ip=5, max_connections=50,
                                 http_header_timeout_s=2.0, http_keepalive_timeout_s=3.0,
                                 http_body_timeout_s=4.0)
    assert ConnectionLimits.from_settings(settings) == ConnectionLimits(5, 50, 2.0, 3.0, 4.0)


def test_limits_refuse_values_that_would_disable_a_guard() -> None:
    with pytest.raises(ValueError):
        ConnectionLimits(max_per_remote=0)
    with pytest.raises(ValueError):
        ConnectionLimits(header_timeout_s=0)


def test_an_ipv4_mapped_ipv6_peer_counts_as_its_ipv4_address() -> None:
    class Transport(asyncio.BaseTransport):
        def __init__(self, peer: Any) -> None:
            super().__init__()
            self.peer = peer

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return self.peer if name == "peername" else default

    assert remote_key(Transport(("::ffff:10.0.0.7", 1, 0, 0))) == "10.0.0.7"
    assert remote_key(Transport(("2001:db8::1", 1, 0, 0))) == "2001:db8::1"
    assert remote_key(Transport("")) == ""


async def test_a_raw_nul_in_the_request_line_is_a_400_and_logs_no_traceback(
        serve: Serve, connect: Connect, caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp's parser refuses it before any handler runs; without our filter it logged a
    traceback for every such request, a free way to flood the log."""
    port, _ = await serve(limits())
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        status, _ = await response(await connect(port),
                                   b"GET /a\x00b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await asyncio.sleep(0.1)
    assert status == 400
    assert not [r for r in caplog.records if r.name == "aiohttp.server" and r.exc_info]
