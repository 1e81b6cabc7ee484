"""Cancellation end to end: whoever stops reading an answer stops the model server.

Each link in turn: the backend client closes the HTTP request it is stopped in; the
provider frees the prompt's slot as it unwinds and counts the abort; ``rpc.cancel``
from our consumer, and a Go consumer closing its TCP connection, both get there; the
consumer's API, when its client closes a stream, cancels at the provider before it
hands the session's turn on, and logs no traceback.

The witness is a backend that records how each request it serves ended: ``done``, or
``gone`` (its client closed the connection). It streams a few tokens and then stalls,
so only a cancel can end a stream early: a stopped request that was not cancelled
shows as one still ``serving``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from proxy_router.consumer.api import ConsumerApi
from proxy_router.consumer.chat import Reply
from proxy_router.metrics import Metrics
from proxy_router.morrpc import ChunkSink, RpcClient, RpcServer, SessionKey, relay_chunks
from proxy_router.morrpc.lumerin import (
    LumerinLimits,
    SessionPromptRes,
    lumerin_call,
    prompt_request,
)
from proxy_router.morrpc.protocol import SSE_FORMAT
from proxy_router.morrpc.server import CANCELLED, _Connection, _Inflight
from proxy_router.netguard import serve_app
from proxy_router.provider.backend import OpenAIBackend
from proxy_router.provider.lumerin_wire import LumerinWire
from proxy_router.provider.models_config import ModelsConfig
from proxy_router.provider.service import ProviderService
from proxy_router.store.db import Store
from tests.provider.fakes import ENDED, RecordingBackend, fixture_of, sse
from tests.provider.test_service import (
    BID,
    MESSAGES,
    MODEL,
    PROVIDER,
    SESSION,
    USER,
    FakeIndex,
    FakeMarket,
    a_bid,
    a_session,
    context,
)

# -- the witness backend ----------------------------------------------------------------


@dataclass
class Witness(RecordingBackend):
    """An OpenAI-style server: a stream sends ``tokens`` tokens, then stalls until its
    client goes; a non-stream request stalls likewise. ``ended`` records each end."""

    tokens: int = 3

    async def answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if not body.get("stream"):
            await asyncio.Event().wait()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(self.tokens):
            delta = {"role": "assistant", "content": "a"} if i == 0 else {"content": " b"}
            await resp.write(sse("c", {"index": 0, "delta": delta, "finish_reason": None},
                                 spaced=True))
        await asyncio.Event().wait()  # stalls: no token, no write, until cancelled
        return resp


witness = fixture_of(Witness)


async def eventually(check: Any, what: str) -> None:
    """Until ``check()`` holds (what a provider does after the backend saw it go)."""
    try:
        async with asyncio.timeout(ENDED):
            while True:
                if check():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not so: {what}") from None


def stream_body(**extra: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, "stream": True, **extra}


# -- the backend client -----------------------------------------------------------------


async def test_closing_a_stream_early_closes_its_backend_request_and_counts_one_abort(
        witness: Witness, http: aiohttp.ClientSession) -> None:
    aborts: list[str] = []
    backend = OpenAIBackend(witness.url, model_name="m", session=http,
                            on_abort=lambda: aborts.append("abort"))
    batches = backend.stream_events(stream_body())
    await batches.__anext__()
    await batches.aclose()
    await witness.wait("the backend saw its client go", lambda: witness.ended == ["gone"])
    assert aborts == ["abort"]


async def test_cancelling_the_reader_of_a_stream_aborts_it(
        witness: Witness, http: aiohttp.ClientSession) -> None:
    aborts: list[str] = []
    backend = OpenAIBackend(witness.url, model_name="m", session=http,
                            on_abort=lambda: aborts.append("abort"))
    first = asyncio.Event()

    async def read() -> None:
        async for _ in backend.stream_events(stream_body()):
            first.set()

    reader = asyncio.create_task(read())
    await first.wait()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await witness.wait("the backend saw its client go", lambda: witness.ended == ["gone"])
    assert aborts == ["abort"]


async def test_a_cancelled_non_stream_request_closes_its_connection(
        witness: Witness, http: aiohttp.ClientSession) -> None:
    aborts: list[str] = []
    backend = OpenAIBackend(witness.url, model_name="m", session=http,
                            on_abort=lambda: aborts.append("abort"))
    call = asyncio.create_task(backend.complete_chat({"messages": MESSAGES}))
    await witness.wait("the request reached the backend", lambda: witness.serving == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await witness.wait("the backend saw its client go", lambda: witness.ended == ["gone"])
    assert aborts == ["abort"]


async def test_a_stream_read_to_its_end_is_no_abort(http: aiohttp.ClientSession) -> None:
    from proxy_router.dev.mock_openai import MockOpenAIServer  # ends its streams

    aborts: list[str] = []
    async with MockOpenAIServer() as mock:
        backend = OpenAIBackend(mock.base_url, model_name="m", session=http,
                                on_abort=lambda: aborts.append("abort"))
        assert [b async for b in backend.stream_events(stream_body())]
    assert aborts == []


# -- the provider -----------------------------------------------------------------------


@dataclass
class Provider:
    service: ProviderService
    store: Store

    def aborts(self) -> float:
        return self.service.metrics.registry.get_sample_value(
            "proxy_router_backend_requests_aborted_total", {"model": "served"}) or 0.0

    def in_flight(self) -> int:
        return self.service.capacity.prompts_in_flight(MODEL)


@pytest.fixture
async def provider(witness: Witness, http: aiohttp.ClientSession, tmp_path: Path
                   ) -> AsyncIterator[Provider]:
    market, index = FakeMarket(), FakeIndex()
    market.sessions[SESSION] = a_session()
    market.bids[BID] = a_bid()
    store = await Store.open(tmp_path, "provider")
    models = ModelsConfig.model_validate({"models": [
        {"modelId": MODEL, "modelName": "served", "apiUrl": witness.url,
         "concurrentSlots": 1}]})
    service = ProviderService(
        account=PROVIDER.account, market=cast(Any, market), index=cast(Any, index),
        models=models, backend_urls={MODEL: witness.url}, store=store, http=http,
        metrics=Metrics("provider"))
    try:
        yield Provider(service, store)
    finally:
        await store.close()


async def test_a_cancelled_prompt_frees_its_slot_before_the_next_task_runs(
        provider: Provider, witness: Witness) -> None:
    first = asyncio.Event()

    async def prompt() -> None:
        async for _ in provider.service.prompt(SESSION, USER.address, stream_body()):
            first.set()

    task = asyncio.create_task(prompt())
    await first.wait()
    assert provider.in_flight() == 1
    task.cancel()  # what rpc.cancel does; the next frame's handler is a task made after it

    async def next_handler() -> tuple[int, dict[str, int]]:
        return provider.in_flight(), dict(provider.service.capacity.session_prompts)

    seen = asyncio.create_task(next_handler())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await seen == (0, {}), "the next handler found the slot and the session free"
    await witness.wait("the backend saw its client go", lambda: witness.ended == ["gone"])
    assert provider.aborts() == 1
    usage = await provider.store.usage(SESSION)
    assert (usage["prompts"], usage["completion_tokens"]) == (1, 3), \
        "what it generated is on the receipt"


async def test_rpc_cancel_from_our_consumer_stops_the_backend_and_frees_the_slot(
        provider: Provider, witness: Witness) -> None:
    server = RpcServer(PROVIDER, observer=provider.service.metrics)
    provider.service.register(server)
    port = await server.start()
    try:
        async with RpcClient(f"127.0.0.1:{port}", USER, PROVIDER.address) as client:
            key = SessionKey.generate()
            stream = client.stream(
                "session.prompt", {"sessionId": SESSION, "key": key.public_key_hex,
                                   "format": SSE_FORMAT},
                cipher=await client.cipher_for(key), payload=json.dumps(stream_body()).encode())
            async with stream:
                await stream.__anext__()
            await witness.wait("the backend saw its client go",
                               lambda: witness.ended == ["gone"])
            assert provider.in_flight() == 0
            assert provider.aborts() == 1
            await eventually(lambda: provider.service.metrics.registry.get_sample_value(
                "proxy_router_rpc_requests_total",
                {"method": "session.prompt", "code": CANCELLED}) == 1,
                "the prompt is counted as cancelled")
            await client.ping()  # the connection carries on
    finally:
        await server.stop()


async def test_a_consumer_task_cancelled_mid_stream_stops_the_provider_too(
        provider: Provider, witness: Witness) -> None:
    """Its cancel goes out from the cancellation itself; ``aclose()`` afterwards returns
    once that cancel is on the socket (the consumer then hands the session on)."""
    server = RpcServer(PROVIDER, observer=provider.service.metrics)
    provider.service.register(server)
    port = await server.start()
    try:
        async with RpcClient(f"127.0.0.1:{port}", USER, PROVIDER.address) as client:
            key = SessionKey.generate()
            stream = client.stream(
                "session.prompt", {"sessionId": SESSION, "key": key.public_key_hex,
                                   "format": SSE_FORMAT},
                cipher=await client.cipher_for(key), payload=json.dumps(stream_body()).encode())
            first = asyncio.Event()

            async def read() -> None:
                async for _ in stream:
                    first.set()

            reader = asyncio.create_task(read())
            await first.wait()
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            await stream.aclose()
            await witness.wait("the backend saw its client go",
                               lambda: witness.ended == ["gone"])
            assert provider.in_flight() == 0
    finally:
        await server.stop()


async def test_a_request_cancelled_before_its_handler_ran_leaves_nothing_in_flight() -> None:
    server = RpcServer(PROVIDER)
    ran: list[str] = []

    @server.method("slow.stream", stream=True)
    async def slow(params: dict[str, Any], ctx: Any) -> AsyncIterator[bytes]:
        ran.append("ran")
        yield b"x"

    conn = _Connection(cast(Any, SimpleNamespace()), PROVIDER, None, None)
    ctx = context(USER, {})
    ctx.method = "slow.stream"
    entry: _Inflight = server._dispatch(conn, ctx)
    conn.inflight[ctx.request_id] = entry
    server._on_notification(conn, _cancel_of(ctx))  # in the same read as its request
    assert entry.task is not None
    with pytest.raises(asyncio.CancelledError):
        await entry.task
    await asyncio.sleep(0)  # done callbacks run
    assert (ran, conn.inflight) == ([], {})


def _cancel_of(ctx: Any) -> Any:
    cancel = context(USER, {"id": ctx.request_id})
    cancel.method = "rpc.cancel"
    return cancel


async def test_a_go_consumer_closing_its_connection_stops_the_backend_without_a_write(
        provider: Provider, witness: Witness) -> None:
    """The stalled backend sends nothing after its first tokens, so no write to the gone
    consumer can fail: only the connection's end can tell the provider."""
    witness.tokens = 1  # one chunk, read by the consumer: nothing is left to write
    wire = LumerinWire(provider.service, PROVIDER, limits=LumerinLimits(), request_timeout_s=5)
    app = web.Application()
    runner, port = await serve_app(app, "127.0.0.1", 0, raw=wire.handle)
    try:
        calls = lumerin_call("127.0.0.1", port,
                             prompt_request(USER, session_id=SESSION,
                                            body=json.dumps(stream_body())),
                             SessionPromptRes, timeout=ENDED)
        await calls.__anext__()  # the first chunk: the prompt runs
        await calls.aclose()  # the Go consumer closes its connection
        await witness.wait("the backend saw its client go", lambda: witness.ended == ["gone"])
        assert provider.in_flight() == 0
        assert provider.aborts() == 1
        await eventually(lambda: provider.service.metrics.registry.get_sample_value(
            "proxy_router_reference_rpc_requests_total",
            {"method": "session.prompt", "code": "PEER_GONE"}) == 1,
            "the prompt is counted as the consumer's going")
    finally:
        await runner.cleanup()


# -- the consumer -----------------------------------------------------------------------

TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'


class EndlessStream:
    """An RpcStream that never ends; what happens to it goes into ``events``."""

    result = None

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.closed = False

    def __aiter__(self) -> EndlessStream:
        return self

    async def __anext__(self) -> bytes:
        await asyncio.sleep(0.01)  # tokens keep coming
        return TOKEN

    async def relay(self, sink: ChunkSink) -> None:
        await relay_chunks(self, sink)

    async def aclose(self) -> None:  # like RpcStream's: the cancel goes out once
        if not self.closed:
            self.closed = True
            self.events.append("cancel sent")


class Turns:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def release(self) -> None:
        self.events.append("turn given back")


async def test_a_client_closing_its_stream_cancels_at_the_provider_before_the_turn_is_given_back(
        caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []
    session = SimpleNamespace(session_id="0x" + "11" * 32, turns=Turns(events))
    reply = Reply(cast(Any, session), cast(Any, EndlessStream(events)), TOKEN)
    done = asyncio.Event()

    async def start(req: Any, session_id: Any) -> Reply:
        return reply

    api = SimpleNamespace(chat=SimpleNamespace(start=start, finished=lambda r: None,
                                               drop=lambda s: None),
                          body_timeout_s=5.0, _session_headers=lambda s: {})
    api._stream = lambda *args: ConsumerApi._stream(cast(Any, api), *args)
    api._prompt = lambda *args: ConsumerApi._prompt(cast(Any, api), *args)
    metrics = Metrics("consumer")

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await ConsumerApi.chat_completions(cast(Any, api), request)
        finally:
            done.set()

    app = web.Application(middlewares=[metrics.middleware])
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    caplog.set_level(logging.DEBUG)
    try:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions",
                json={"model": "m", "messages": MESSAGES, "stream": True})
            await resp.content.readline()
            resp.close()  # the client goes
        async with asyncio.timeout(ENDED):
            await done.wait()
    finally:
        await runner.cleanup()
    assert events == ["cancel sent", "turn given back"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert metrics.registry.get_sample_value(
        "proxy_router_http_requests_total",
        {"method": "POST", "route": "/v1/chat/completions", "status": "499"}) == 1
