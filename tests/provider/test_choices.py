"""Several choices (``n > 1``): the provider runs the request once per choice on the
model's free slots and merges the answers into the one OpenAI gives.

The MOCK server answers the plain cases; ``Choir``, a backend that records every request
(how many it serves at once, how each ended), pins down slots, failures and stops: its
streams can wait for one another or stall until their client goes, so no assertion here
depends on timing.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from proxy_router.dev.mock_openai import MockOpenAIServer
from proxy_router.metrics import Metrics
from proxy_router.morrpc import ErrorCode, RpcError
from proxy_router.provider.capacity import CapacityManager
from proxy_router.provider.choices import merge_replies
from proxy_router.provider.models_config import ModelsConfig
from proxy_router.provider.service import ProviderService
from proxy_router.provider.usage import MeterSum
from tests.provider.fakes import ENDED, RecordingBackend, fixture_of, sse
from tests.provider.test_service import (
    MESSAGES,
    MODEL,
    PROVIDER,
    SESSION,
    USER,
    FakeIndex,
    FakeMarket,
    FakeStore,
    a_session,
)

# -- the backends -----------------------------------------------------------------------


@dataclass
class Choir(RecordingBackend):
    """An OpenAI-style server whose answer to a request with seed ``s`` is ``tokens``
    tokens ``"s<s> "`` (and its usage, if ``usage``). ``together``: each stream holds its
    last token until that many requests were served at once (the peak); ``stall``:
    streams stall after their tokens until their client goes; a request with seed
    ``fail_seed`` answers 500 once ``fail_after`` others are being served."""

    tokens: int = 3
    together: int = 0
    stall: bool = False
    fail_seed: int = -1
    fail_after: int = 0
    usage: bool = True

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/completions", self._chat)  # legacy: the same, as text

    async def answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        assert "n" not in body, "each generation asks for one choice"
        seed = body.get("seed")
        if seed == self.fail_seed:
            await self.wait("the others are served", lambda: self.serving > self.fail_after)
            return web.json_response({"error": {"message": "boom"}}, status=500)
        text, rid = f"s{seed} ", f"chatcmpl-{seed}"
        legacy = "prompt" in body
        if not body.get("stream"):
            return web.json_response(_reply(text, self.tokens, legacy=legacy))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(self.tokens):
            if i == self.tokens - 1 and self.together:
                await self.wait("enough served at once", lambda: self.peak >= self.together)
            delta = {"role": "assistant", "content": text} if i == 0 else {"content": text}
            choice = {"index": 0, "text": text, "logprobs": None} if legacy else \
                {"index": 0, "delta": delta}
            await resp.write(sse(rid, {**choice, "finish_reason": None}))
        if self.stall:
            await asyncio.Event().wait()
        end: dict[str, Any] = {"text": ""} if legacy else {"delta": {}}
        tail = sse(rid, {"index": 0, **end, "finish_reason": "stop"})
        if self.usage:
            usage = {"prompt_tokens": 7, "completion_tokens": self.tokens,
                     "total_tokens": 7 + self.tokens}
            tail += sse(rid, None, usage=usage)
        await resp.write(tail + b"data: [DONE]\n\n")
        return resp


def _reply(text: str, tokens: int, *, legacy: bool = False) -> dict[str, Any]:
    answer = {"text": text * tokens} if legacy else {
        "message": {"role": "assistant", "content": text * tokens}}
    return {"id": f"chatcmpl-{text.strip()}", "created": 1, "model": "m",
            "object": "text_completion" if legacy else "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop", **answer}],
            "usage": {"prompt_tokens": 7, "completion_tokens": tokens,
                      "total_tokens": 7 + tokens}}


choir = fixture_of(Choir)


# -- the provider -----------------------------------------------------------------------


@dataclass
class Provider:
    service: ProviderService
    store: FakeStore

    def in_flight(self) -> int:
        return self.service.capacity.prompts_in_flight(MODEL)

    def aborts(self) -> float:
        return self.service.metrics.registry.get_sample_value(
            "proxy_router_backend_requests_aborted_total", {"model": "served"}) or 0.0

    async def answer(self, body: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        trailer: dict[str, Any] = {}
        items = [item async for item in self.service.prompt(
            SESSION, USER.address, {"messages": MESSAGES, **body}, trailer=trailer)]
        return items, trailer


def provider_on(url: str, http: aiohttp.ClientSession, slots: int) -> Provider:
    market, index, store = FakeMarket(), FakeIndex(), FakeStore()
    market.sessions[SESSION] = a_session()
    models = ModelsConfig.model_validate({"models": [
        {"modelId": MODEL, "modelName": "served", "apiUrl": url, "concurrentSlots": slots}]})
    service = ProviderService(
        account=PROVIDER.account, market=cast(Any, market), index=cast(Any, index),
        models=models, backend_urls={MODEL: url}, store=cast(Any, store), http=http,
        metrics=Metrics("provider"))
    return Provider(service, store)


def events(items: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(payload) for batch in items for payload in batch]


def by_index(chunks: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    choices: dict[int, list[dict[str, Any]]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            choices.setdefault(choice["index"], []).append(choice)
    return choices


def text_of(choices: list[dict[str, Any]]) -> str:
    return "".join(c["delta"].get("content") or "" for c in choices)


# -- answers ----------------------------------------------------------------------------


async def test_a_stream_of_three_choices_has_each_index_with_its_text_and_its_finish(
        mock_openai: MockOpenAIServer, http: aiohttp.ClientSession) -> None:
    provider = provider_on(mock_openai.base_url, http, slots=4)
    items, trailer = await provider.answer({"stream": True, "n": 3})
    chunks = events(items)
    choices = by_index(chunks)
    assert sorted(choices) == [0, 1, 2]
    for index, deltas in choices.items():
        assert deltas[0]["delta"].get("role") == "assistant", index
        assert text_of(deltas) == "tok " * 5, index
        assert [c["finish_reason"] for c in deltas if c["finish_reason"]] == ["stop"], index
    assert len({chunk["id"] for chunk in chunks}) == 1, "one id, as OpenAI streams it"
    (usage,) = [chunk["usage"] for chunk in chunks if chunk.get("usage")]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == usage, "usage comes last"
    assert usage == {"prompt_tokens": 2, "completion_tokens": 15, "total_tokens": 17}
    assert (trailer["usage"]["prompt_tokens"], trailer["usage"]["completion_tokens"]) == (2, 15)
    assert provider.store.recorded == [(SESSION, 2, 15, trailer["usage"]["ttft_ms"],
                                        trailer["usage"]["tps_x1000"])]
    assert mock_openai.requests_seen == 3 and provider.in_flight() == 0


async def test_a_whole_answer_of_three_choices_is_one_completion_indexed_in_order(
        choir: Choir, http: aiohttp.ClientSession) -> None:
    provider = provider_on(choir.url, http, slots=4)
    (reply,), trailer = await provider.answer({"stream": False, "n": 3, "seed": 8})
    assert reply["object"] == "chat.completion" and reply["id"] == "chatcmpl-s8"
    assert [(c["index"], c["message"]["content"]) for c in reply["choices"]] == [
        (0, "s8 " * 3), (1, "s9 " * 3), (2, "s10 " * 3)], "each choice its own seed"
    assert reply["usage"] == {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}
    assert (trailer["usage"]["prompt_tokens"], trailer["usage"]["completion_tokens"]) == (7, 9)
    assert [row[1:3] for row in provider.store.recorded] == [(7, 9)]


async def test_a_stream_without_usage_from_its_backend_still_bills_the_prompt_once(
        choir: Choir, http: aiohttp.ClientSession) -> None:
    choir.usage = False  # and no tokenizer to ask: the counts are estimates
    provider = provider_on(choir.url, http, slots=4)
    items, trailer = await provider.answer({"stream": True, "n": 2})
    assert not [e for e in events(items) if e.get("usage")], "no sum of what was not counted"
    usage = trailer["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3, 6)  # 11 chars / 4
    assert usage["estimated"] == ["prompt", "completion"]


async def test_n_of_one_is_the_plain_path(
        mock_openai: MockOpenAIServer, http: aiohttp.ClientSession) -> None:
    provider = provider_on(mock_openai.base_url, http, slots=4)
    items, trailer = await provider.answer({"stream": True, "n": 1})
    assert sorted(by_index(events(items))) == [0] and trailer["usage"]["completion_tokens"] == 5
    assert mock_openai.requests_seen == 1 and "n" not in (mock_openai.last_request or {})


async def test_more_choices_than_served_are_a_bad_request_naming_n(
        mock_openai: MockOpenAIServer, http: aiohttp.ClientSession) -> None:
    provider = provider_on(mock_openai.base_url, http, slots=4)
    with pytest.raises(RpcError) as err:
        await provider.answer({"n": 17})
    assert err.value.code == ErrorCode.BAD_REQUEST and err.value.data == {"param": "n"}
    assert mock_openai.requests_seen == 0


async def test_legacy_completions_get_several_choices_too(
        choir: Choir, http: aiohttp.ClientSession) -> None:
    provider = provider_on(choir.url, http, slots=2)

    async def answer(stream: bool) -> tuple[list[Any], dict[str, Any]]:
        trailer: dict[str, Any] = {}
        body = {"prompt": "Once upon", "n": 2, "seed": 4, "stream": stream}
        return [item async for item in provider.service.prompt(
            SESSION, USER.address, body, trailer=trailer, api="completions")], trailer

    items, trailer = await answer(stream=True)
    texts = {i: "".join(c.get("text") or "" for c in cs)
             for i, cs in by_index(events(items)).items()}
    assert texts == {0: "s4 " * 3, 1: "s5 " * 3}
    assert trailer["usage"]["completion_tokens"] == 6
    (reply,), _ = await answer(stream=False)
    assert [(c["index"], c["text"]) for c in reply["choices"]] == [(0, "s4 " * 3),
                                                                   (1, "s5 " * 3)]


# -- slots ------------------------------------------------------------------------------


async def test_with_two_slots_three_choices_run_two_at_a_time_and_all_come(
        choir: Choir, http: aiohttp.ClientSession) -> None:
    choir.together = 2  # the first two wait for each other: both run at once
    provider = provider_on(choir.url, http, slots=2)
    items, trailer = await provider.answer({"stream": True, "n": 3, "seed": 0})
    chunks = events(items)
    assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]}, "one id for the stream"
    choices = by_index(chunks)
    assert {i: text_of(c) for i, c in choices.items()} == {
        0: "s0 " * 3, 1: "s1 " * 3, 2: "s2 " * 3}
    assert (len(choir.requests), choir.peak) == (3, 2), "never more requests than slots"
    assert trailer["usage"]["completion_tokens"] == 9
    assert provider.in_flight() == 0


async def test_choices_take_no_slot_a_waiting_prompt_is_owed() -> None:
    capacity = CapacityManager({MODEL: 2}, queue_depth=4, queue_wait_s=ENDED)
    async with capacity.prompt_slot(MODEL, "a"):
        with capacity.extra_slots(MODEL, 5) as extra:
            assert extra.held == 1, "only what is free"
            waiting = asyncio.create_task(_hold(capacity, "b"))
            await asyncio.sleep(0)
            assert capacity.queued(MODEL) == 1
            with capacity.extra_slots(MODEL, 1) as more:
                assert more.held == 0
        await asyncio.wait_for(waiting, ENDED)  # the freed extra went to the waiter
    assert capacity.prompts_in_flight(MODEL) == 0 and capacity.session_prompts == {}


async def _hold(capacity: CapacityManager, session: str) -> None:
    async with capacity.prompt_slot(MODEL, session):
        pass


async def test_extra_slots_do_not_count_against_the_sessions_prompts() -> None:
    capacity = CapacityManager({MODEL: 3}, prompts_per_session=1)
    async with capacity.prompt_slot(MODEL, "a"):
        with capacity.extra_slots(MODEL, 2) as extra:
            assert extra.held == 2 and capacity.session_prompts == {"a": 1}
            assert capacity.prompts_in_flight(MODEL) == 3
        assert capacity.prompts_in_flight(MODEL) == 1


# -- failures and stops -----------------------------------------------------------------


async def test_one_choice_failing_fails_the_request_and_stops_the_others(
        choir: Choir, http: aiohttp.ClientSession) -> None:
    choir.stall, choir.fail_seed, choir.fail_after = True, 1, 2  # 0 and 2 are streaming
    provider = provider_on(choir.url, http, slots=3)
    with pytest.raises(RpcError) as err:
        await provider.answer({"stream": True, "n": 3, "seed": 0})
    assert err.value.code == ErrorCode.BACKEND_ERROR
    assert provider.in_flight() == 0
    await choir.wait("the other two saw their client go",
                     lambda: sorted(choir.ended) == ["failed", "gone", "gone"])
    assert provider.aborts() == 2
    assert provider.store.recorded == [], "a failed prompt is not billed, as with one choice"


async def test_cancelling_the_prompt_stops_every_choice_and_frees_every_slot_at_once(
        choir: Choir, http: aiohttp.ClientSession) -> None:
    choir.stall = True
    provider = provider_on(choir.url, http, slots=3)
    seen: dict[int, int] = {}
    every = asyncio.Event()

    async def read() -> None:
        async for item in provider.service.prompt(
                SESSION, USER.address, {"messages": MESSAGES, "stream": True, "n": 3}):
            for chunk in events([item]):
                for choice in chunk["choices"]:
                    seen[choice["index"]] = seen.get(choice["index"], 0) + 1
            if seen == {0: choir.tokens, 1: choir.tokens, 2: choir.tokens}:
                every.set()  # every token of every choice: then they stall

    task = asyncio.create_task(read())
    await asyncio.wait_for(every.wait(), ENDED)
    assert provider.in_flight() == 3
    task.cancel()  # what rpc.cancel does

    async def next_handler() -> tuple[int, dict[str, int]]:
        return provider.in_flight(), dict(provider.service.capacity.session_prompts)

    later = asyncio.create_task(next_handler())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await later == (0, {}), "the next task found every slot free"
    await choir.wait("every choice saw its client go", lambda: choir.ended == ["gone"] * 3)
    assert provider.aborts() == 3
    (recorded,) = provider.store.recorded
    assert recorded[2] == 3 * choir.tokens, "what every choice generated is billed"


async def test_closing_the_prompt_early_stops_every_choice(
        choir: Choir, http: aiohttp.ClientSession) -> None:
    choir.stall = True
    provider = provider_on(choir.url, http, slots=3)
    items = provider.service.prompt(SESSION, USER.address,
                                    {"messages": MESSAGES, "stream": True, "n": 3})
    await items.__anext__()
    await choir.wait("every choice is served", lambda: choir.serving == 3)
    await items.aclose()  # the consumer went away
    assert provider.in_flight() == 0
    await choir.wait("every choice saw its client go", lambda: choir.ended == ["gone"] * 3)


# -- the merge --------------------------------------------------------------------------


def test_whole_replies_merge_into_one_with_the_first_ones_identity() -> None:
    replies = [_reply(f"s{i} ", 2) | {"id": f"c{i}", "created": 10 + i} for i in range(3)]
    merged = merge_replies(replies)
    assert (merged["id"], merged["created"]) == ("c0", 10)
    assert [c["index"] for c in merged["choices"]] == [0, 1, 2]
    assert merged["usage"] == {"prompt_tokens": 7, "completion_tokens": 6,
                               "total_tokens": 13}
    del replies[1]["usage"]
    assert "usage" not in merge_replies(replies), "no sum of what was not counted"


def test_the_sum_of_meters_counts_the_prompt_once_and_times_the_first_token_of_any(
) -> None:
    now = [0.0]
    total = MeterSum(prompt_tokens_estimate=3, clock=lambda: now[0])
    late, early = total.start(0), total.start(1)
    now[0] = 0.2
    early.observe({"choices": [{"delta": {"content": "a"}}]})
    now[0] = 0.5
    late.observe({"choices": [{"delta": {"content": "b"}}]})
    late.observe({"usage": {"prompt_tokens": 9, "completion_tokens": 4}})
    early.observe({"usage": {"prompt_tokens": 9, "completion_tokens": 2}})
    result = total.result()
    assert (result.prompt_tokens, result.completion_tokens) == (9, 6)
    assert result.ttft_ms == 200 and result.estimated == ()
    assert total.missing() == () and early.missing() == ()
