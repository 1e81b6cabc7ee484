"""ConsumerApi._stream: provider chunks (SSE bytes) to the client's event stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web

from proxy_router.consumer.api import ConsumerApi
from proxy_router.consumer.schemas import ChatRequest
from proxy_router.morrpc import ChunkSink, ErrorCode, RpcError, RpcUnavailable, relay_chunks

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
        await relay_chunks(self, sink)

    async def aclose(self) -> None:
        self._chunks.clear()


class FakeReply:
    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.first, self.stream = chunks[0], FakeStream(chunks[1:], error)
        self.session = SimpleNamespace(session_id="0x" + "11" * 32)
        self.usage = TRAILER

    async def aclose(self) -> None:
        await self.stream.aclose()


async def serve(reply: FakeReply, body: dict[str, Any],
                dropped: list[Any] | None = None) -> list[bytes]:
    """Run `_stream` behind a real HTTP server; return the client's SSE events (and
    the sessions it dropped in ``dropped``)."""
    chat = SimpleNamespace(finished=lambda r: None,
                           drop=(dropped if dropped is not None else []).append)
    api = SimpleNamespace(chat=chat)
    req = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True, **body})

    async def handler(request: web.Request) -> web.StreamResponse:
        return await ConsumerApi._stream(api, request, req, reply, {})  # type: ignore[arg-type]

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{runner.addresses[0][1]}/") as resp:
            raw = await resp.read()
    finally:
        await runner.cleanup()
    assert raw.endswith(b"data: [DONE]\n\n")
    return [e + b"\n\n" for e in raw.split(b"\n\n")[:-1]]


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
