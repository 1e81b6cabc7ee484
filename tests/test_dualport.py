"""One port, two wires: a connection is HTTP unless it opens with a JSON object."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from proxy_router.netguard import ConnectionLimits, serve_app

LIMITS = ConnectionLimits(max_per_remote=2, max_total=8, header_timeout_s=0.5,
                          exempt_loopback=False)  # the tests' peers are all loopback


async def echo_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    first: bytes) -> None:
    """Answers the bytes it got first, then whatever follows, until EOF."""
    writer.write(b"raw:" + first)
    while chunk := await reader.read(1024):
        writer.write(chunk)
    await writer.drain()


def hello_app() -> web.Application:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="http")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


@pytest.fixture
async def port() -> AsyncIterator[int]:
    runner, bound = await serve_app(hello_app(), "127.0.0.1", 0, LIMITS, raw=echo_json)
    try:
        yield bound
    finally:
        await runner.cleanup()


async def raw_exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_an_http_request_reaches_the_app(port: int) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as r:
        assert await r.text() == "http"


async def test_a_connection_opening_with_json_reaches_the_raw_handler(port: int) -> None:
    assert await raw_exchange(port, b'{"id":"1"}') == b'raw:{"id":"1"}'


async def test_leading_blanks_do_not_decide_the_wire(port: int) -> None:
    assert await raw_exchange(port, b'  \n{"a":1}') == b'raw:  \n{"a":1}'


async def test_a_silent_connection_is_closed_after_the_first_byte_deadline(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_raw_connections_are_capped_per_remote(port: int) -> None:
    held = []
    for _ in range(LIMITS.max_per_remote):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"{")
        await writer.drain()
        assert await reader.readexactly(5) == b"raw:{"
        held.append(writer)
    try:
        try:  # over the cap: dropped (a reset or an empty answer, as the race goes)
            answer = await raw_exchange(port, b"{}")
        except ConnectionResetError:
            answer = b""
        assert answer == b""
    finally:
        for writer in held:
            writer.close()


def test_both_wires_work_under_uvloop() -> None:
    """The routers run on uvloop, whose transports are no ``asyncio.Transport``."""
    import uvloop

    async def both() -> tuple[bytes, str]:
        runner, bound = await serve_app(hello_app(), "127.0.0.1", 0, LIMITS, raw=echo_json)
        try:
            raw = await raw_exchange(bound, b'{"x":1}')
            async with aiohttp.ClientSession() as http, \
                    http.get(f"http://127.0.0.1:{bound}/") as r:
                return raw, await r.text()
        finally:
            await runner.cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(both()) == (b'raw:{"x":1}', "http")
