"""The paid path with the real model: an OpenAI client against the consumer,
sessions opened and settled on chain, every wei accounted for."""

from __future__ import annotations

import aiohttp
import pytest
from openai import AsyncOpenAI, NotFoundError

from proxy_router.chain.marketplace import Marketplace
from proxy_router.dev.devnet import DevnetState
from tests.integration.conftest import mor_holdings

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Say hello in three words."}]


def openai_client(state: DevnetState) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=state.consumer_url, api_key="local", max_retries=0)


async def close_session(state: DevnetState, session_id: str) -> dict:
    async with aiohttp.ClientSession() as http, http.post(
            f"{state.consumer_base}/blockchain/sessions/{session_id}/close",
            headers=state.auth()) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_models_lists_the_marketplace_model_with_an_active_bid(devnet: DevnetState):
    models = await openai_client(devnet).models.list()
    assert [m.id for m in models.data] == [devnet.model_name, devnet.embedding_model_name]


async def test_non_streamed_chat_returns_a_real_model_answer(devnet: DevnetState):
    client = openai_client(devnet)
    reply = await client.chat.completions.create(model=devnet.model_name, messages=MESSAGES,
                                                 max_tokens=16)
    assert reply.choices[0].message.content.strip()
    assert reply.usage is not None and reply.usage.completion_tokens > 0


async def test_streamed_chat_yields_text_chunks_and_usage_when_asked(devnet: DevnetState):
    client = openai_client(devnet)
    stream = await client.chat.completions.create(
        model=devnet.model_name, messages=MESSAGES, max_tokens=16, stream=True,
        stream_options={"include_usage": True})
    text, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(text).strip()
    assert usage is not None and usage.completion_tokens > 0


async def test_the_model_can_be_named_by_its_on_chain_id(devnet: DevnetState):
    reply = await openai_client(devnet).chat.completions.create(
        model=devnet.model_id, messages=MESSAGES, max_tokens=4)
    assert reply.choices[0].message.content is not None


async def test_unknown_model_is_a_404_in_openai_shape(devnet: DevnetState):
    with pytest.raises(NotFoundError) as err:
        await openai_client(devnet).chat.completions.create(model="no-such-model",
                                                            messages=MESSAGES)
    assert err.value.body["code"] == "model_not_found"


async def test_closing_a_session_settles_it_to_the_wei(devnet: DevnetState,
                                                       reader: Marketplace):
    before = await mor_holdings(reader, devnet)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{devnet.consumer_base}/blockchain/models/"
                             f"{devnet.model_id}/session", json={"sessionDuration": 600},
                             headers=devnet.auth()) as resp:
            assert resp.status == 201, await resp.text()
            session_id = (await resp.json())["sessionId"]
        async with http.post(f"{devnet.consumer_url}/chat/completions",
                             headers={"session_id": session_id},
                             json={"model": devnet.model_name, "messages": MESSAGES,
                                   "max_tokens": 8}) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Session-Id"] == session_id
    settlement = await close_session(devnet, session_id)
    after = await mor_holdings(reader, devnet)
    onchain = await reader.get_session(session_id)

    stake, paid = int(settlement["stake"]), int(settlement["providerEarned"])
    refund, held = int(settlement["userRefund"]), int(settlement["held"])
    assert settlement["disputed"] is False and held == 0
    assert stake == paid + refund
    assert paid == (onchain.closed_at - onchain.opened_at) * onchain.price_per_second
    assert after["user"] - before["user"] == -paid
    assert after["provider"] - before["provider"] == paid
    assert after["marketplace"] == before["marketplace"]
    assert sum(after.values()) == sum(before.values())
    stats = await reader.get_stats(devnet.provider_address, devnet.model_id)
    assert stats.success_count >= 1 and stats.completion_tokens_sum > 0


async def test_provider_capabilities_report_models_and_hardware(devnet: DevnetState):
    from proxy_router.dev.anvil import dev_key
    from proxy_router.morrpc import RpcClient, Signer

    async with RpcClient(devnet.provider_endpoint, Signer.from_key(dev_key(2)),
                         devnet.provider_address) as client:
        caps = await client.call("provider.capabilities", {})
        pong = await client.ping()
    assert caps["address"] == devnet.provider_address
    assert [m["modelId"] for m in caps["models"]] == [devnet.model_id,
                                                      devnet.embedding_model_id]
    hardware = caps["hardware"]
    assert isinstance(hardware["gpus"], list)  # no GPU here: an empty list, not an error
    assert hardware["cpu"]["count"] >= 1
    assert "version" in pong


async def test_both_routers_report_healthy_components(devnet: DevnetState):
    async with aiohttp.ClientSession() as http:
        async with http.get(devnet.consumer_base + "/healthcheck") as resp:
            consumer = await resp.json()
            assert resp.status == 200, consumer
        async with http.get(f"http://{devnet.provider_endpoint}/healthcheck") as resp:
            provider = await resp.json()
            assert resp.status == 200, provider
    assert consumer["failing"] == [] and consumer["components"]["chain"]["ok"]
    assert provider["components"][f"backend:{devnet.model_name}"]["ok"]


async def test_streamed_chat_without_include_usage_has_no_usage_chunk(devnet: DevnetState):
    client = openai_client(devnet)
    stream = await client.chat.completions.create(
        model=devnet.model_name, messages=MESSAGES, max_tokens=8, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert all(c.usage is None and c.choices for c in chunks)
