"""ClientEvents: provider chunks written straight to the client's connection by the
MOR-RPC reader, framed as the response is, and refusing more once the client lags."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp import web

from proxy_router.consumer.sse import CLIENT_BUFFER_BYTES, ClientEvents
from proxy_router.morrpc import RpcError

TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = (b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 1}}).encode()
         + b"\n\n")


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


def events(*, chunked: bool = True, include_usage: bool = False,
           transport: Transport | None = None) -> tuple[ClientEvents, Transport]:
    transport = transport or Transport()
    request = SimpleNamespace(transport=transport)
    headers = {"Transfer-Encoding": "chunked"} if chunked else {}
    resp = SimpleNamespace(prepared=True, compression=False, headers=headers)
    return ClientEvents(cast(web.Request, request), cast(web.StreamResponse, resp),
                        include_usage=include_usage), transport


def test_a_chunk_is_written_in_http11_chunked_framing() -> None:
    sink, transport = events()
    assert sink.write(TOKEN) is True
    assert transport.written == [b"%x\r\n" % len(TOKEN) + TOKEN + b"\r\n"]


def test_an_http10_client_gets_the_bytes_unframed() -> None:
    sink, transport = events(chunked=False)
    sink.write(TOKEN)
    assert transport.written == [TOKEN]


def test_a_lagging_client_makes_the_sink_ask_for_a_drain() -> None:
    sink, transport = events()
    transport.buffered = CLIENT_BUFFER_BYTES + 1
    assert sink.write(TOKEN) is False
    assert transport.written, "the chunk itself is taken: only further ones wait"


def test_a_client_that_left_raises_connection_reset() -> None:
    transport = Transport()
    transport.closing = True
    sink, _ = events(transport=transport)
    with pytest.raises(ConnectionResetError):
        sink.write(TOKEN)
    gone = SimpleNamespace(transport=None)
    resp = SimpleNamespace(prepared=True, compression=False, headers={})
    sink = ClientEvents(cast(web.Request, gone), cast(web.StreamResponse, resp),
                        include_usage=False)
    with pytest.raises(ConnectionResetError):
        sink.write(TOKEN)


def test_a_chunk_that_is_not_sse_is_refused_before_anything_is_written() -> None:
    sink, transport = events()
    with pytest.raises(RpcError):
        sink.write(b'{"choices": []}')
    assert transport.written == []


@pytest.mark.parametrize(("include_usage", "written"), [(False, [TOKEN]),
                                                        (True, [TOKEN + USAGE])])
def test_a_usage_only_event_is_kept_only_when_the_client_asked(
        include_usage: bool, written: list[bytes]) -> None:
    sink, transport = events(chunked=False, include_usage=include_usage)
    sink.write(TOKEN + USAGE)
    assert transport.written == written and sink.saw_usage


def test_only_a_prepared_uncompressed_response_can_be_written_around_aiohttp() -> None:
    request = cast(web.Request, SimpleNamespace(transport=Transport()))
    for resp in (SimpleNamespace(prepared=False, compression=False, headers={}),
                 SimpleNamespace(prepared=True, compression=True, headers={})):
        with pytest.raises(ValueError):
            ClientEvents(request, cast(web.StreamResponse, resp), include_usage=False)


async def test_drain_waits_on_aiohttps_writer() -> None:
    drained = asyncio.Event()

    async def drain() -> None:
        drained.set()

    request: Any = SimpleNamespace(transport=Transport(), writer=SimpleNamespace(drain=drain))
    resp = SimpleNamespace(prepared=True, compression=False, headers={})
    await ClientEvents(request, cast(web.StreamResponse, resp), include_usage=False).drain()
    assert drained.is_set()
