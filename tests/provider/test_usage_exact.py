"""Exact token counts: the provider gets them from the backend, marks what it had to
estimate, and the receipt carries what the client was shown.

``LlamaLike`` behaves as llama-cpp-python's server does: streams in spaced JSON without
any usage (``stream_options`` or not), non-stream replies with the usage of the prompt
as its chat template renders it (more tokens than the messages' text), and a tokenizer
at ``/extras/tokenize/count`` that counts a BOS token in. The MOCK OpenAI server stands
for the servers that do send a stream's usage.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from proxy_router.chain.encoding import Receipt
from proxy_router.consumer.sse import filter_usage
from proxy_router.dev.mock_openai import MockOpenAIServer
from proxy_router.metrics import Metrics
from proxy_router.provider.models_config import ModelsConfig
from proxy_router.provider.service import ProviderService
from proxy_router.provider.usage import UsageMeter
from proxy_router.store.db import Store
from tests.provider.fakes import RecordingBackend, fixture_of, sse
from tests.provider.test_service import (
    MESSAGES,
    MODEL,
    PROVIDER,
    SESSION,
    USER,
    FakeIndex,
    FakeMarket,
    a_session,
)

TEMPLATE_TOKENS = 30
"""What the chat template adds to the messages' own tokens (SmolLM2's adds 30)."""
TOKENS = ["Hel", "lo", ",", " wor", "ld", " — ", "ça", " va"]


def words(text: str) -> int:
    """The fake tokenizer: one token per word."""
    return len(text.split())


def prompt_count(body: dict[str, Any]) -> int:
    return TEMPLATE_TOKENS + sum(words(m["content"]) for m in body["messages"])


@dataclass
class LlamaLike(RecordingBackend):
    tokenizer: bool = True
    usage_in_replies: bool = True

    def routes(self, router: web.UrlDispatcher) -> None:
        if self.tokenizer:
            router.add_post("/extras/tokenize/count", self._count)

    async def _count(self, request: web.Request) -> web.Response:
        return web.json_response({"count": 1 + words((await request.json())["input"])})

    async def answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        tokens = TOKENS[:body.get("max_tokens") or len(TOKENS)]
        if not body.get("stream"):
            reply: dict[str, Any] = {
                "id": "c", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": "".join(tokens)}}]}
            if self.usage_in_replies:
                reply["usage"] = {"prompt_tokens": prompt_count(body),
                                  "completion_tokens": len(tokens),
                                  "total_tokens": prompt_count(body) + len(tokens)}
            return web.json_response(reply)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, text in enumerate([*tokens, None]):
            delta = {} if text is None else {"content": text, **(
                {"role": "assistant"} if i == 0 else {})}
            finish = "stop" if text is None else None
            await resp.write(sse("c", {"index": 0, "delta": delta, "finish_reason": finish},
                                 spaced=True))
        await resp.write(b"data: [DONE]\n\n")
        return resp


@dataclass
class Provider:
    service: ProviderService
    store: Store

    async def ask(self, **body: Any) -> tuple[list[Any], dict[str, Any]]:
        """One prompt: what the consumer receives, and the usage of its trailer."""
        trailer: dict[str, Any] = {}
        items = [item async for item in self.service.prompt(
            SESSION, USER.address, {"messages": MESSAGES, **body}, trailer=trailer)]
        return items, trailer["usage"]

    def estimated(self, kind: str) -> float:
        return self.service.metrics.registry.get_sample_value(
            "proxy_router_usage_estimated_total", {"model": "served", "type": kind}) or 0.0


ProviderFor = Callable[[str], Awaitable[Provider]]


@pytest.fixture
async def provider_for(http: aiohttp.ClientSession, tmp_path: Path
                       ) -> AsyncIterator[ProviderFor]:
    stores: list[Store] = []

    async def make(url: str) -> Provider:
        market = FakeMarket()
        market.sessions[SESSION] = a_session()
        store = await Store.open(tmp_path / str(len(stores)), "provider")
        stores.append(store)
        models = ModelsConfig.model_validate({"models": [
            {"modelId": MODEL, "modelName": "served", "apiUrl": url, "concurrentSlots": 1}]})
        service = ProviderService(
            account=PROVIDER.account, market=cast(Any, market), index=cast(Any, FakeIndex()),
            models=models, backend_urls={MODEL: url}, store=store, http=http,
            metrics=Metrics("provider"))
        return Provider(service, store)

    yield make
    for store in stores:
        await store.close()


llama = fixture_of(LlamaLike)


# -- a backend whose streams carry no usage ------------------------------------------------


async def test_a_stream_reports_the_prompt_count_of_the_same_request_unstreamed(
        llama: LlamaLike, provider_for: ProviderFor) -> None:
    p = await provider_for(llama.url)
    _, streamed = await p.ask(stream=True)
    _, whole = await p.ask(stream=False)
    assert streamed["prompt_tokens"] == whole["prompt_tokens"] == prompt_count(
        {"messages": MESSAGES}), "the template's tokens counted, not the text's alone"
    probe = llama.requests[1]
    assert (probe["max_tokens"], probe["stream"], probe["messages"]) == (1, False, MESSAGES)


async def test_a_streams_completion_is_counted_by_the_backends_tokenizer(
        llama: LlamaLike, provider_for: ProviderFor) -> None:
    p = await provider_for(llama.url)
    _, usage = await p.ask(stream=True)
    assert usage["completion_tokens"] == words("".join(TOKENS)), "the BOS token left out"
    assert "estimated" not in usage
    assert (p.estimated("prompt"), p.estimated("completion")) == (0, 0)


async def test_counts_nothing_better_exists_for_are_marked_as_estimates(
        provider_for: ProviderFor) -> None:
    async with LlamaLike(tokenizer=False, usage_in_replies=False) as bare:
        p = await provider_for(bare.url)
        _, usage = await p.ask(stream=True)
        _, again = await p.ask(stream=True)
    assert usage["estimated"] == again["estimated"] == ["prompt", "completion"]
    assert usage["completion_tokens"] == len(TOKENS), "one token per content chunk"
    assert (p.estimated("prompt"), p.estimated("completion")) == (2, 2)
    assert p.service.backends[MODEL].backends[0].tokenizer is False, "asked once, then no more"


async def test_a_server_without_the_tokenizer_route_is_not_asked_the_prompt_again(
        provider_for: ProviderFor) -> None:
    """Such a server may be a hosted API, which would bill the prompt a second time."""
    async with LlamaLike(tokenizer=False) as hosted:
        p = await provider_for(hosted.url)
        _, usage = await p.ask(stream=True)
    assert len(hosted.requests) == 1, "the stream alone"
    assert usage["estimated"] == ["prompt", "completion"]


# -- a backend that sends a stream's usage ----------------------------------------------------


async def test_every_stream_asks_for_usage_and_a_backend_that_sends_it_is_asked_nothing_more(
        provider_for: ProviderFor) -> None:
    async with MockOpenAIServer() as mock:
        p = await provider_for(mock.base_url)
        items, usage = await p.ask(stream=True)  # the client asked no usage
        assert mock.requests_seen == 1
        assert mock.last_request is not None
        assert mock.last_request["stream_options"] == {"include_usage": True}
    assert b'"usage"' in b"".join(b"".join(batch) for batch in items), \
        "the consumer strips it again (below)"
    assert "estimated" not in usage and usage["completion_tokens"] == 16


def test_the_usage_only_event_is_stripped_for_a_client_that_did_not_ask() -> None:
    token = b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n'
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}\n\n'
    assert filter_usage(token + usage, keep_usage_only=False) == (token, True)
    assert filter_usage(token + usage, keep_usage_only=True) == (token + usage, True)


# -- the receipt ----------------------------------------------------------------------------


async def test_the_receipt_carries_the_counts_the_client_was_shown(
        llama: LlamaLike, provider_for: ProviderFor) -> None:
    p = await provider_for(llama.url)
    shown = [(await p.ask(stream=True))[1], (await p.ask(stream=False))[0][0]["usage"],
             (await p.ask(stream=True, max_tokens=3))[1]]
    receipt, _, _ = await p.service.report(SESSION, USER.address)
    r = Receipt.decode(receipt)
    assert (r.prompt_tokens, r.completion_tokens) == (
        sum(u["prompt_tokens"] for u in shown), sum(u["completion_tokens"] for u in shown))


# -- the meter's text -----------------------------------------------------------------------


def test_the_streamed_text_is_read_from_compact_json_escapes_and_all() -> None:
    meter = UsageMeter()
    for text in ['say "hi"', "back\\slash\\", "é\n", "\u2014"]:
        meter.observe_raw(json.dumps(
            {"choices": [{"index": 0, "delta": {"content": text}}]},
            separators=(",", ":")).encode())
    meter.observe_raw(b'{"choices":[{"index":0,"delta":{"reasoning_content":"think",'
                      b'"content":""}}]}')
    assert meter.text() == 'say "hi"back\\slash\\é\n\u2014think'
    assert meter.result().completion_tokens == 5


def test_an_answer_with_tool_calls_has_no_text_to_count() -> None:
    meter = UsageMeter()
    meter.observe({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {
        "name": "f", "arguments": "{}"}}]}}]})
    assert meter.text() is None
    assert meter.missing() == ("prompt", "completion")
