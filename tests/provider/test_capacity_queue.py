"""The prompt queue of CapacityManager: a prompt that finds every slot of its model busy
waits for one, first come first served, rather than being refused; at most
``queue_depth`` wait, each at most ``queue_wait_s``, then NoCapacity (a 429 with
Retry-After); a waiter that goes away leaves its place, and a slot it was just handed
goes to the next."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from proxy_router.provider.capacity import (
    CapacityManager,
    NoCapacity,
    QueueOutcome,
    SessionBusy,
)

M = "0x" + "aa" * 32


@dataclass
class Observed:
    depths: list[int] = field(default_factory=list)
    outcomes: list[QueueOutcome] = field(default_factory=list)

    def queue_depth(self, model_id: str, depth: int) -> None:
        assert model_id == M
        self.depths.append(depth)

    def queue_left(self, model_id: str, waited_s: float, outcome: QueueOutcome) -> None:
        assert waited_s >= 0
        self.outcomes.append(outcome)


def manager(slots: int = 1, *, depth: int = 16, wait_s: float = 60.0,
            observed: Observed | None = None, per_session: int = 1) -> CapacityManager:
    return CapacityManager({M: slots}, queue_depth=depth, queue_wait_s=wait_s,
                           observer=observed, prompts_per_session=per_session)


class Prompt:
    """A prompt as a task: takes a slot, notes when it got it, holds it until ``done``."""

    def __init__(self, cap: CapacityManager, name: str, served: list[str],
                 session: str | None = None) -> None:
        self.name = name
        self.done = asyncio.Event()
        self.task = asyncio.create_task(self._run(cap, served, session))

    async def _run(self, cap: CapacityManager, served: list[str], session: str | None) -> None:
        async with cap.prompt_slot(M, session):
            served.append(self.name)
            await self.done.wait()

    async def finish(self) -> None:
        self.done.set()
        await self.task


async def until(check: Callable[[], bool]) -> None:
    """Let the event loop run until ``check`` holds (a few turns; no clock involved)."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def test_a_prompt_that_finds_every_slot_busy_waits_for_one_instead_of_a_refusal() -> None:
    cap, served = manager(slots=1), []
    first = Prompt(cap, "first", served)
    second = Prompt(cap, "second", served)
    await until(lambda: cap.queued(M) == 1)
    assert served == ["first"]
    await first.finish()
    await until(lambda: served == ["first", "second"])
    assert cap.queued(M) == 0 and cap.prompts_in_flight(M) == 1
    await second.finish()
    assert cap.prompts_in_flight(M) == 0


async def test_many_waiters_are_served_in_the_order_they_came() -> None:
    cap, served = manager(slots=2, depth=20), []
    prompts = [Prompt(cap, f"p{i}", served) for i in range(12)]
    await until(lambda: cap.queued(M) == 10)
    for i in range(12):
        await prompts[i].finish()
    assert served == [f"p{i}" for i in range(12)]
    assert cap.prompts_in_flight(M) == 0 and cap.queued(M) == 0


async def test_a_newcomer_does_not_overtake_the_queue_when_a_slot_frees() -> None:
    cap, served = manager(slots=1), []
    holder = Prompt(cap, "holder", served)
    waiter = Prompt(cap, "waiter", served)
    await until(lambda: cap.queued(M) == 1)
    holder.done.set()
    await until(holder.task.done)  # the slot is handed over; the waiter has not run yet
    newcomer = Prompt(cap, "newcomer", served)
    await until(lambda: len(served) == 2)
    assert served == ["holder", "waiter"] and cap.queued(M) == 1
    await waiter.finish()
    await newcomer.finish()
    assert served == ["holder", "waiter", "newcomer"]


async def test_a_full_queue_refuses_at_once_with_a_retry_after() -> None:
    observed = Observed()
    cap, served = manager(slots=1, depth=2, observed=observed), []
    prompts = [Prompt(cap, f"p{i}", served) for i in range(3)]
    await until(lambda: cap.queued(M) == 2)
    with pytest.raises(NoCapacity, match="2 waiting") as refused:
        async with cap.prompt_slot(M):
            pytest.fail("a prompt beyond the queue's depth must not run")
    assert refused.value.retry_after_s >= 1
    for p in prompts:
        await p.finish()
    assert served == ["p0", "p1", "p2"]
    assert observed.outcomes.count("full") == 1 and observed.outcomes.count("served") == 3


async def test_a_wait_that_runs_out_is_no_capacity_and_leaves_the_queue() -> None:
    observed = Observed()
    cap, served = manager(slots=1, wait_s=0.01, observed=observed), []
    holder = Prompt(cap, "holder", served)
    await until(lambda: served == ["holder"])
    with pytest.raises(NoCapacity, match="waited"):
        async with cap.prompt_slot(M):
            pytest.fail("the wait ran out: the prompt must not run")
    assert cap.queued(M) == 0 and observed.outcomes[-1] == "timeout"
    await holder.finish()
    async with cap.prompt_slot(M):  # the slot is free again, nothing leaked
        assert cap.prompts_in_flight(M) == 1


async def test_no_queue_or_no_wait_refuses_at_once_as_before() -> None:
    for cap in (manager(depth=0), manager(wait_s=0)):
        async with cap.prompt_slot(M):
            with pytest.raises(NoCapacity):
                async with cap.prompt_slot(M):
                    pass


async def test_a_waiter_that_goes_away_leaves_its_place_to_the_next() -> None:
    observed = Observed()
    cap, served = manager(slots=1, observed=observed), []
    holder = Prompt(cap, "holder", served)
    gone = Prompt(cap, "gone", served)
    after = Prompt(cap, "after", served)
    await until(lambda: cap.queued(M) == 2)
    gone.task.cancel()  # its client disconnected
    await until(lambda: cap.queued(M) == 1)
    await holder.finish()
    await until(lambda: served == ["holder", "after"])
    await after.finish()
    with pytest.raises(asyncio.CancelledError):
        await gone.task
    assert "cancelled" in observed.outcomes
    assert observed.depths == [1, 2, 1, 0]
    assert cap.prompts_in_flight(M) == 0


async def test_a_slot_handed_to_a_waiter_that_is_going_away_goes_to_the_next() -> None:
    cap, served = manager(slots=1), []
    holder = Prompt(cap, "holder", served)
    first = Prompt(cap, "first", served)
    second = Prompt(cap, "second", served)
    await until(lambda: cap.queued(M) == 2)
    holder.done.set()
    await until(holder.task.done)  # the slot is now the first waiter's...
    first.task.cancel()  # ...which goes away before it could run
    await until(lambda: served[-1] == "second")
    assert served == ["holder", "second"] and cap.prompts_in_flight(M) == 1
    await second.finish()
    assert cap.prompts_in_flight(M) == 0 and cap.queued(M) == 0


async def test_a_waiting_prompt_counts_against_its_session_s_limit() -> None:
    cap, served = manager(slots=1), []
    holder = Prompt(cap, "holder", served, session="s0")
    waiting = Prompt(cap, "waiting", served, session="s1")
    await until(lambda: cap.queued(M) == 1)
    with pytest.raises(SessionBusy):  # one cheap session cannot fill the queue either
        async with cap.prompt_slot(M, "s1"):
            pass
    await holder.finish()
    await waiting.finish()
    assert cap.session_prompts == {}


async def test_a_refused_prompt_gives_its_session_turn_back() -> None:
    cap, served = manager(slots=1, depth=0), []
    holder = Prompt(cap, "holder", served, session="s0")
    await until(lambda: served == ["holder"])
    with pytest.raises(NoCapacity):
        async with cap.prompt_slot(M, "s1"):
            pass
    assert cap.session_prompts == {"s0": 1}
    await holder.finish()


def test_queue_limits_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="queue"):
        manager(depth=-1)
    with pytest.raises(ValueError, match="queue"):
        manager(wait_s=-1)
