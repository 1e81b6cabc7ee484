"""Cost in the open and the expiry race, with the real model and the openai SDK.

An answer names its request and the session it was paid from, with that session's
price and its cost so far; and a session the provider reports over before the consumer
noticed its end is settled by the consumer, not left open for good."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from proxy_router.chain.marketplace import Marketplace
from proxy_router.dev.anvil import dev_key
from proxy_router.dev.devnet import DevnetState
from tests.integration.conftest import InProcessConsumer, consumer_router
from tests.integration.helpers import (
    DURATION,
    close_session,
    eventually,
    open_session,
    request,
    travel,
)

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Say hello."}]
LATE = 6  # an anvil dev account with MOR that no other test of the shared devnet uses


def openai_client(base_url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0)


async def test_answers_name_the_request_and_the_session_with_its_price_and_growing_cost(
        devnet: DevnetState, reader: Marketplace):
    session_id = await open_session(devnet, 600)  # time to spare for the travel below
    chat = openai_client(devnet.consumer_url).chat.completions
    try:
        first = await chat.with_raw_response.create(
            model=devnet.model_name, messages=MESSAGES, max_tokens=4,
            extra_headers={"X-Request-Id": "req_cost-in-the-open-1", "session_id": session_id})
        assert first.parse().choices[0].message.content is not None
        await travel(devnet, 30)  # half a minute of the session passes
        second = await chat.with_raw_response.create(
            model=devnet.model_name, messages=MESSAGES, max_tokens=4, stream=True,
            extra_headers={"session_id": session_id})
        async for _ in second.parse():
            pass
        status, view = await request("GET", f"{devnet.consumer_base}/blockchain/sessions/"
                                            f"{session_id}")
    finally:
        await close_session(devnet, session_id)

    assert first.headers["x-request-id"] == "req_cost-in-the-open-1"
    assert re.fullmatch(r"req_[0-9a-f]{32}", second.headers["x-request-id"])
    assert first.headers["x-session-id"] == second.headers["x-session-id"] == session_id
    onchain = await reader.get_session(session_id)
    price = onchain.price_per_second
    assert price > 0
    assert first.headers["x-session-price-per-second"] == str(price)
    assert second.headers["x-session-price-per-second"] == str(price)
    cost = [int(r.headers["x-session-cost-so-far"]) for r in (first, second)]
    assert cost[0] >= 0 and cost[1] - cost[0] >= 30 * price, "MOR wei: it grows as it runs"
    assert cost[0] % price == cost[1] % price == 0, "price × whole seconds since opening"
    assert status == 200 and int(view["costSoFar"]) >= cost[1], "the chain's own view agrees"
    assert onchain.provider_earned >= cost[1], "what was shown was paid, no more"


@pytest.fixture
async def late(devnet: DevnetState, tmp_path: Path) -> AsyncIterator[InProcessConsumer]:
    """A consumer whose sessions last the shortest time the contract allows and that
    closes none for idleness (this is about their end)."""
    async with consumer_router(devnet, dev_key(LATE), tmp_path, session_duration_s=DURATION,
                               session_idle_timeout_s=0) as consumer:
        yield consumer


async def my_sessions(consumer: InProcessConsumer) -> dict[str, dict[str, object]]:
    status, rows = await request("GET", f"{consumer.base}/blockchain/sessions")
    assert status == 200, rows
    return {str(row["sessionId"]): row for row in rows}


async def test_a_session_the_provider_reports_expired_first_is_settled_by_the_consumer(
        devnet: DevnetState, reader: Marketplace, late: InProcessConsumer):
    chat = openai_client(late.url).chat.completions
    opened = await chat.with_raw_response.create(model=devnet.model_name, messages=MESSAGES,
                                                 max_tokens=4)
    old, new = opened.headers["x-session-id"], None
    index = late.router.index
    seen = index.chain_now()
    index.chain_now = lambda: seen  # type: ignore[method-assign]  # misses the time travel
    try:
        await travel(devnet, DURATION + 5)  # past the end: the provider refuses its prompts
        answered = await chat.with_raw_response.create(
            model=devnet.model_name, messages=MESSAGES, max_tokens=4)
        assert answered.parse().choices[0].message.content is not None, \
            "the client still gets its answer, from a new session"
        new = answered.headers["x-session-id"]
        assert new != old

        async def settled_by_us() -> object:
            row = (await my_sessions(late))[old]
            return row["status"] == "closed" and row["closeTx"]
        await eventually(settled_by_us, 30, "the consumer did not settle the expired session")
    finally:
        del index.chain_now
        if new is not None:
            status, body = await request(
                "POST", f"{late.base}/blockchain/sessions/{new}/close", headers=late.auth())
            assert status == 200, body

    s = await reader.get_session(old)
    assert s.closed and not s.disputed, "settled with the provider's receipt"
    assert s.provider_earned == DURATION * s.price_per_second, "an expired session is paid in full"
    assert s.stake == s.provider_earned + s.user_refund
    assert [row["status"] for row in (await my_sessions(late)).values()] == ["closed", "closed"]
