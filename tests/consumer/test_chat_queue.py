"""The consumer's queue: a request that finds its session answering as many prompts as
the provider allows waits for a turn, first come first served, rather than being
refused; at most ``queue_depth`` wait per session, each at most ``queue_wait_s``, then
``SessionBusy`` (a 429 with Retry-After). Depth and waits are in the metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from proxy_router.consumer import domain_errors as d
from proxy_router.consumer.chat import ChatService, Reply
from proxy_router.consumer.errors import to_api_error
from tests.consumer.test_failover import REQUEST, A, Sessions, service


async def until(check: Callable[[], bool]) -> None:
    """Let the event loop run until ``check`` holds (a few turns; no clock involved)."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def metric(chat: ChatService, name: str, **labels: str) -> float:
    return chat.metrics.registry.get_sample_value(name, {"model": "m", **labels}) or 0.0


async def started(chat: ChatService, order: list[int], i: int) -> Reply:
    reply = await chat.start(REQUEST, None)
    order.append(i)
    return reply


async def test_requests_beyond_the_session_s_turns_wait_and_are_served_in_turn() -> None:
    chat = service(Sessions(A), {})
    first = await chat.start(REQUEST, None)
    order: list[int] = []
    waiting = [asyncio.create_task(started(chat, order, i)) for i in range(5)]
    await until(lambda: metric(chat, "proxy_router_prompt_queue_depth") == 5)
    held = first
    for i in range(5):
        held.close()  # the answer ended: the next in line gets the session's turn
        held = await waiting[i]
    held.close()
    assert order == [0, 1, 2, 3, 4]
    assert metric(chat, "proxy_router_prompt_queue_depth") == 0
    assert metric(chat, "proxy_router_prompt_queue_wait_seconds_count",
                  outcome="served") == 6, "every prompt's wait is observed, 0 s included"


async def test_a_full_queue_is_session_busy_at_once_a_429_with_retry_after() -> None:
    chat = service(Sessions(A), {})
    chat.queue_depth = 2
    first = await chat.start(REQUEST, None)
    waiting = [asyncio.create_task(chat.start(REQUEST, None)) for _ in range(2)]
    await until(lambda: metric(chat, "proxy_router_prompt_queue_depth") == 2)
    with pytest.raises(d.SessionBusy, match="2 more wait") as busy:
        await chat.start(REQUEST, None)
    error = to_api_error(busy.value)
    assert (error.status, error.headers) == (429, {"Retry-After": "1"})
    assert metric(chat, "proxy_router_prompt_queue_refused_total", reason="full") == 1
    first.close()
    for task in waiting:
        (await task).close()


async def test_a_wait_that_runs_out_is_session_busy() -> None:
    chat = service(Sessions(A), {})
    chat.queue_wait_s = 0.01
    first = await chat.start(REQUEST, None)
    with pytest.raises(d.SessionBusy, match="waited"):
        await chat.start(REQUEST, None)
    assert metric(chat, "proxy_router_prompt_queue_refused_total", reason="timeout") == 1
    first.close()
    (await chat.start(REQUEST, None)).close()  # the turn is free again


async def test_a_request_whose_client_went_away_leaves_its_place() -> None:
    chat = service(Sessions(A), {})
    first = await chat.start(REQUEST, None)
    order: list[int] = []
    gone = asyncio.create_task(started(chat, order, 0))
    after = asyncio.create_task(started(chat, order, 1))
    await until(lambda: metric(chat, "proxy_router_prompt_queue_depth") == 2)
    gone.cancel()
    await until(lambda: metric(chat, "proxy_router_prompt_queue_depth") == 1)
    first.close()
    (await after).close()
    assert order == [1]
    assert metric(chat, "proxy_router_prompt_queue_wait_seconds_count",
                  outcome="cancelled") == 1
    assert first.session.turns.locked() is False, "no turn leaked"
