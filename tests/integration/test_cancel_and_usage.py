"""Cancellation and usage with the real model (SmolLM2 in llama.cpp) through the devnet.

A client that closes its stream stops the model: the provider aborts its backend request
(its abort metric rises) before the next request's first token, so that request does not
wait behind the old generation; the provider's slot is free again; the consumer logs
the close as an ordinary end, without a traceback. Usage is the backend's own count, the
same streamed or not, and the receipt carries what the client was shown.

Nothing here is timed: each claim is an order of events or a count.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from proxy_router.chain.encoding import Receipt
from proxy_router.dev.anvil import dev_key
from proxy_router.dev.devnet import USER, DevnetState
from proxy_router.morrpc import RpcClient, Signer
from tests.integration.conftest import logs_of
from tests.integration.helpers import close_session, eventually, open_session, provider_capacity

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Say hello in three words."}]
LONG = {"messages": [{"role": "user", "content": "Write a very long story about a dragon "
                                                 "and a knight, with many chapters."}],
        "max_tokens": 1500, "stream": True,
        "logit_bias": {"0": -100, "2": -100}}
"""A stream that cannot end by itself soon: SmolLM2's end tokens (0, 2) are forbidden."""
ABORTED = "proxy_router_backend_requests_aborted_total"


async def provider_metric(state: DevnetState, name: str, **labels: str) -> float:
    """A sample of the provider's /metrics (0 if it has none yet)."""
    async with aiohttp.ClientSession() as http, http.get(
            f"http://{state.provider_endpoint}/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def aborts(state: DevnetState) -> float:
    return await provider_metric(state, ABORTED, model=state.model_name)


async def content_chunks(resp: aiohttp.ClientResponse, n: int) -> None:
    """Read until ``n`` events with content have come."""
    seen = 0
    async for line in resp.content:
        if line.startswith(b"data: {") and b'"content"' in line and b'"role"' not in line:
            seen += 1
            if seen >= n:
                return
    raise AssertionError(f"the stream ended after {seen} content events")


def openai_client(state: DevnetState) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=state.consumer_url, api_key="local", max_retries=0)


async def test_a_closed_stream_stops_the_model_before_the_next_request_gets_its_first_token(
        devnet: DevnetState) -> None:
    before = await aborts(devnet)
    cancels = await provider_metric(devnet, "proxy_router_rpc_requests_total",
                                    method="session.prompt", code="CANCELLED")
    log_start = len(logs_of(devnet, "consumer"))
    url = devnet.consumer_url + "/chat/completions"
    async with aiohttp.ClientSession() as http:
        resp = await http.post(url, json={"model": devnet.model_name, **LONG})
        assert resp.status == 200, await resp.text()
        await content_chunks(resp, 3)
        resp.close()  # the client goes, mid-answer

        # at once, the next request, on the same session: it waits for the session's turn
        async with http.post(url, json={"model": devnet.model_name, "messages": MESSAGES,
                                        "max_tokens": 8, "stream": True}) as nxt:
            assert nxt.status == 200, await nxt.text()
            await content_chunks(nxt, 1)
            aborted_by_then = await aborts(devnet)
            rest = await nxt.read()
    assert aborted_by_then == before + 1, \
        "the closed stream's backend request was aborted before the next first token"
    assert rest.endswith(b"data: [DONE]\n\n")

    async def slot_free() -> bool:
        return (await provider_capacity(devnet))["promptsInFlight"] == 0

    await eventually(slot_free, 15, "the provider's slot was not freed")
    assert await aborts(devnet) == before + 1, "the next request ran to its end"
    assert await provider_metric(devnet, "proxy_router_rpc_requests_total",
                                 method="session.prompt", code="CANCELLED") == cancels + 1
    log = logs_of(devnet, "consumer")[log_start:]
    assert "stream_closed_by_client" in log
    assert "Traceback" not in log


async def test_streamed_and_non_streamed_usage_count_the_same_prompt_alike(
        devnet: DevnetState) -> None:
    client = openai_client(devnet)
    whole = await client.chat.completions.create(model=devnet.model_name, messages=MESSAGES,
                                                 max_tokens=8)
    stream = await client.chat.completions.create(
        model=devnet.model_name, messages=MESSAGES, max_tokens=8, stream=True,
        stream_options={"include_usage": True})
    usages = [chunk.usage async for chunk in stream if chunk.usage is not None]
    assert whole.usage is not None and len(usages) == 1
    streamed = usages[0]
    assert streamed.prompt_tokens == whole.usage.prompt_tokens
    assert streamed.prompt_tokens > len(MESSAGES[0]["content"].split()), \
        "the chat template's tokens are counted"
    assert 0 < streamed.completion_tokens <= 8
    assert streamed.total_tokens == streamed.prompt_tokens + streamed.completion_tokens

    unasked = await client.chat.completions.create(
        model=devnet.model_name, messages=MESSAGES, max_tokens=8, stream=True)
    assert [chunk async for chunk in unasked if chunk.usage is not None] == [], \
        "a client that did not ask gets no usage chunk"


async def test_the_receipt_carries_the_usage_the_client_was_shown(devnet: DevnetState) -> None:
    session_id = await open_session(devnet)
    client = openai_client(devnet)
    on_it = {"session_id": session_id}
    shown: list[Any] = []
    try:
        stream = await client.chat.completions.create(
            model=devnet.model_name, messages=MESSAGES, max_tokens=12, stream=True,
            stream_options={"include_usage": True}, extra_headers=on_it)
        shown += [chunk.usage async for chunk in stream if chunk.usage is not None]
        whole = await client.chat.completions.create(
            model=devnet.model_name, messages=MESSAGES, max_tokens=6, extra_headers=on_it)
        shown.append(whole.usage)
        async with RpcClient(devnet.provider_endpoint, Signer.from_key(dev_key(USER)),
                             devnet.provider_address) as rpc:
            report = await rpc.call("session.report", {"sessionId": session_id})
    finally:
        await close_session(devnet, session_id)
    receipt = Receipt.decode(bytes.fromhex(report["receipt"][2:]))
    assert len(shown) == 2
    assert (receipt.prompt_tokens, receipt.completion_tokens) == (
        sum(u.prompt_tokens for u in shown), sum(u.completion_tokens for u in shown))


async def test_a_client_that_leaves_a_whole_answer_stops_it_at_the_provider(
        devnet: DevnetState) -> None:
    """An SDK that times out closes the connection and retries: the abandoned attempt is
    cancelled (rpc.cancel), its backend request closed and its slot freed, not kept
    generating for nobody. (llama-cpp-python itself finishes a non-streamed generation
    it has begun: it never looks at the connection; a streamed one it stops.)"""
    before = await aborts(devnet)
    cancels = await provider_metric(devnet, "proxy_router_rpc_requests_total",
                                    method="session.prompt", code="CANCELLED")
    log_start = len(logs_of(devnet, "consumer"))
    body = {"model": devnet.model_name, **LONG, "stream": False, "max_tokens": 400}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        with pytest.raises(TimeoutError):
            await http.post(devnet.consumer_url + "/chat/completions", json=body)

    async def cancelled() -> bool:
        return await provider_metric(devnet, "proxy_router_rpc_requests_total",
                                     method="session.prompt", code="CANCELLED") == cancels + 1

    await eventually(cancelled, 15, "the abandoned request was not cancelled")
    assert await aborts(devnet) == before + 1, "its backend request was closed"

    async def slot_free() -> bool:
        return (await provider_capacity(devnet))["promptsInFlight"] == 0

    await eventually(slot_free, 15, "the provider's slot was not freed")
    log = logs_of(devnet, "consumer")[log_start:]
    assert "request_abandoned_by_client" in log and "Traceback" not in log
