"""ConsumerApi._stream: provider chunks (SSE bytes) to the client's event stream."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web

from proxy_router.consumer.api import ConsumerApi
from proxy_router.consumer.schemas import ChatRequest
from proxy_router.morrpc import ChunkSink, ErrorCode, RpcError, RpcUnavailable

HEAD = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 5, "model": "m"}


def ev(**fields: Any) -> bytes:
    return b"data: " + json.dumps({**HEAD, **fields}).encode() + b"\n\n"


TOKEN = ev(choices=[{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}])
FINISH = ev(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
USAGE = ev(choices=[], usage={"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3})
TRAILER = {"prompt_tokens": 4, "completion_tokens": 6}


class FakeStream:
    """A provider stream: ``chunks`` in order, then ``error`` (if any) or the end;
    relayed into the sink the way ``RpcStream.relay`` does (minus the socket)."""

    def __init__(self, chunks: list[bytes], error: Exception | None) -> None:
        self._chunks, self._error = list(chunks), error

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._chunks:
            return self._chunks.pop(0)
        if self._error is not None:
            raise self._error
        raise StopAsyncIteration

    async def relay(self, sink: ChunkSink) -> None:
        self.sink_was_full = False
        async for chunk in self:
            if not sink.write(chunk):
                self.sink_was_full = True
                await sink.drain()

    async def aclose(self) -> None:
        self._chunks.clear()


class FakeReply:
    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.first, self.stream = chunks[0], FakeStream(chunks[1:], error)
        self.session = SimpleNamespace(session_id="0x" + "11" * 32)
        self.usage = TRAILER

    async def aclose(self) -> None:
        await self.stream.aclose()


@asynccontextmanager
async def running(reply: FakeReply, body: dict[str, Any], dropped: list[Any] | None = None,
                  *, send_buffer: int | None = None) -> AsyncIterator[int]:
    """`_stream` of ``reply`` behind a real HTTP server on 127.0.0.1; yields its port (and
    collects the sessions it dropped in ``dropped``); ``send_buffer``: the kernel's send
    buffer of each connection, in bytes."""
    chat = SimpleNamespace(finished=lambda r: None,
                           drop=(dropped if dropped is not None else []).append)
    api = SimpleNamespace(chat=chat)
    req = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True, **body})

    async def handler(request: web.Request) -> web.StreamResponse:
        if send_buffer is not None and request.transport is not None:
            request.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        return await ConsumerApi._stream(api, request, req, reply, {})  # type: ignore[arg-type]

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def serve(reply: FakeReply, body: dict[str, Any],
                dropped: list[Any] | None = None) -> list[bytes]:
    """The client's SSE events of ``reply`` read with aiohttp's client."""
    async with running(reply, body, dropped) as port, aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/") as resp:
        raw = await resp.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    return [e + b"\n\n" for e in raw.split(b"\n\n")[:-1]]


async def raw_get(port: int, version: str, *, read_after_s: float = 0.0) -> bytes:
    """The whole HTTP response to a bare ``GET /`` of ``version``, read by a client with a
    small receive buffer that starts reading only after ``read_after_s``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET / HTTP/{version}\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                 .encode())
    await asyncio.sleep(read_after_s)
    raw = await reader.read()
    writer.close()
    return raw


async def test_coalesced_chunks_reach_the_client_as_separate_events() -> None:
    events = await serve(FakeReply([TOKEN, TOKEN + TOKEN + FINISH + USAGE]), {})
    assert events == [TOKEN, TOKEN, TOKEN, FINISH, b"data: [DONE]\n\n"]


async def test_the_backend_usage_chunk_is_passed_when_asked() -> None:
    events = await serve(FakeReply([TOKEN, FINISH + USAGE]),
                         {"stream_options": {"include_usage": True}})
    assert events == [TOKEN, FINISH, USAGE, b"data: [DONE]\n\n"]


async def test_a_usage_chunk_is_made_from_the_signed_trailer_when_the_backend_sent_none(
) -> None:
    events = await serve(FakeReply([TOKEN, FINISH]), {"stream_options": {"include_usage": True}})
    assert events[:2] == [TOKEN, FINISH]
    final = json.loads(events[2][6:])
    assert (final["id"], final["created"], final["model"], final["choices"]) == (
        "chatcmpl-9", 5, "m", [])
    assert final["usage"]["total_tokens"] == 10


async def test_a_chunk_that_is_not_sse_ends_the_stream_with_an_error_not_garbage() -> None:
    events = await serve(FakeReply([TOKEN, TOKEN[6:-2], TOKEN]), {})
    assert events[0] == TOKEN
    assert json.loads(events[1][6:])["error"]["code"] == "backend_error"
    assert events[2:] == [b"data: [DONE]\n\n"]


async def test_a_mid_stream_failure_ends_with_an_error_event() -> None:
    error = RpcError(ErrorCode.BACKEND_ERROR, "backend stream broken")
    dropped: list[Any] = []
    events = await serve(FakeReply([TOKEN, TOKEN], error), {}, dropped)
    assert events[:2] == [TOKEN, TOKEN]
    assert json.loads(events[2][6:])["error"] == {
        "message": "backend stream broken", "type": "api_error", "param": None,
        "code": "backend_error"}
    assert events[3] == b"data: [DONE]\n\n"
    assert dropped == [], "a failed answer does not make the provider broken"


async def test_a_provider_that_breaks_mid_answer_is_no_longer_used() -> None:
    for error, code in ((RpcError(ErrorCode.BACKEND_UNAVAILABLE, "llama died"),
                         "backend_unavailable"),
                        (RpcUnavailable("link lost"), "provider_unavailable")):
        reply = FakeReply([TOKEN], error)
        dropped: list[Any] = []
        events = await serve(reply, {}, dropped)
        assert json.loads(events[1][6:])["error"]["code"] == code
        assert dropped == [reply.session]


async def test_an_http10_client_gets_the_events_unframed_to_the_connections_close() -> None:
    reply = FakeReply([TOKEN, TOKEN, FINISH])
    async with running(reply, {}) as port:
        raw = await raw_get(port, "1.0")
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert payload == TOKEN + TOKEN + FINISH + b"data: [DONE]\n\n"


async def test_a_client_that_reads_slowly_is_written_to_as_it_drains_and_misses_nothing(
) -> None:
    """Relayed chunks are written from the provider's socket, with no task to pace them:
    a client that does not read makes the relay wait for its socket to drain (and the
    stream's credit with it) instead of queueing the whole answer in memory."""
    events = [ev(choices=[{"index": 0, "delta": {"content": f"<{i:03d}>" + "x" * 16_000},
                           "finish_reason": None}]) for i in range(120)]
    reply = FakeReply([TOKEN, *events, FINISH])
    async with running(reply, {}, send_buffer=4096) as port:
        raw = await raw_get(port, "1.1", read_after_s=0.3)
    assert reply.stream.sink_was_full
    found = [raw.find(f"<{i:03d}>".encode()) for i in range(120)]
    assert -1 not in found and found == sorted(found)
    assert raw.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
