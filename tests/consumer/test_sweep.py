"""The consumer's sweeper: which sessions it settles, and when."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from eth_account import Account

from proxy_router.chain.events import MarketEvent
from proxy_router.chain.types import chain_now
from proxy_router.consumer.sessions import ConsumerSession, LocalStatus, SessionManager
from proxy_router.morrpc import SessionKey


def manager(idle_timeout_s: int = 0) -> tuple[SessionManager, list[str]]:
    index = SimpleNamespace(subscribe=lambda _: None, chain_now=chain_now)
    closed: list[str] = []
    disputed: list[str] = []
    mgr = SessionManager(account=Account.create(), market=None, index=index,  # type: ignore[arg-type]
                         store=None, pool=None, idle_timeout_s=idle_timeout_s)  # type: ignore[arg-type]

    async def close(session_id: str, *, dispute: bool = False) -> dict[str, Any]:
        closed.append(session_id)
        if dispute:
            disputed.append(session_id)
        mgr.sessions[session_id].status = LocalStatus.CLOSED
        return {}

    mgr.close = close  # type: ignore[method-assign]
    mgr.disputed = disputed  # type: ignore[attr-defined]
    return mgr, closed


def session(session_id: str, ends_in: int,
            status: LocalStatus = LocalStatus.OPEN) -> ConsumerSession:
    now = int(time.time())
    return ConsumerSession(session_id, "0xmodel", "0xbid", "0xprovider", "127.0.0.1:1",
                           SessionKey.generate(), 10, now, now + ends_in, status)


async def test_expired_idle_and_failed_failover_sessions_are_settled_the_rest_kept():
    mgr, closed = manager(idle_timeout_s=60)
    for s in (session("expired", -1), session("fresh", 600), session("idle", 600),
              session("dropped", 600, LocalStatus.CLOSING),
              session("done", -1, LocalStatus.CLOSED)):
        mgr.sessions[s.session_id] = s
        mgr.last_used[s.session_id] = time.time()
    mgr.last_used["idle"] = time.time() - 120
    await mgr.sweep()
    assert sorted(closed) == ["dropped", "expired", "idle"]
    assert mgr.disputed == ["dropped"], "failover drops settle as disputes"
    assert mgr.sessions["fresh"].status is LocalStatus.OPEN


def test_a_session_s_status_is_stored_as_its_plain_value():
    row = session("s", 600, LocalStatus.CLOSING).row()
    assert row["status"] == "closing" and type(row["status"]) is str
    assert ConsumerSession.from_row(row).status is LocalStatus.CLOSING
    assert ConsumerSession.from_row(row).public()["status"] == "closing"


async def test_an_answering_session_is_never_idle_and_its_idle_time_starts_at_the_answer_end():
    mgr, closed = manager(idle_timeout_s=60)
    s = mgr.sessions["long"] = session("long", 600)
    mgr.last_used["long"] = time.time() - 120  # the prompt was sent two minutes ago
    await s.turns.acquire()  # ...and is still being answered
    await mgr.sweep()
    assert closed == [], "closing it would cut the answer off"
    s.turns.release()  # the answer ends now
    await mgr.sweep()
    assert closed == [], "idle counts from the answer's end, not the prompt's start"
    s.turns.freed_at -= 61
    await mgr.sweep()
    assert closed == ["long"]


async def test_a_session_opened_through_the_api_is_not_closed_for_idleness_only_at_its_end():
    mgr, closed = manager(idle_timeout_s=60)
    mgr.sessions["chosen"] = session("chosen", 600)
    mgr.sessions["chosen"].auto = False  # the user chose its length
    mgr.last_used["chosen"] = time.time() - 3600
    await mgr.sweep()
    assert closed == []
    mgr.sessions["chosen"].ends_at = int(time.time()) - 1
    await mgr.sweep()
    assert closed == ["chosen"]


class Store:
    def __init__(self) -> None:
        self.status: dict[str, str] = {}

    async def set_consumer_session_status(self, session_id: str, status: str,
                                          close_tx: str | None = None) -> None:
        self.status[session_id] = status


async def test_a_session_the_provider_reports_over_is_settled_with_its_receipt_at_once():
    mgr, closed = manager()
    mgr.store = Store()  # type: ignore[assignment]
    over = mgr.sessions["over"] = session("over", 600)  # our clock: 10 minutes left
    mgr.ended(over)
    assert over.status is LocalStatus.CLOSING, "never used for another prompt"
    await asyncio.gather(*mgr._background)
    assert closed == ["over"] and mgr.disputed == [], "not the provider's fault: no dispute"
    assert mgr.store.status == {"over": "closing"}  # type: ignore[attr-defined]


async def test_a_reported_over_session_whose_close_failed_is_retried_by_the_sweeper():
    mgr, closed = manager()
    over = mgr.sessions["over"] = session("over", 600, LocalStatus.CLOSING)
    over.ended_by_provider = True
    await mgr.sweep()
    assert closed == ["over"] and mgr.disputed == []


async def test_a_session_closed_on_chain_while_we_were_closing_it_is_marked_closed():
    mgr, _ = manager()
    mgr.store = Store()  # type: ignore[assignment]
    mgr.sessions["over"] = session("over", 600, LocalStatus.CLOSING)
    await mgr._on_event(MarketEvent("SessionClosed", 1, session_id="over"))
    assert mgr.sessions["over"].status is LocalStatus.CLOSED
    assert mgr.store.status == {"over": "closed"}  # type: ignore[attr-defined]


async def test_a_session_being_closed_takes_no_new_prompt():
    mgr, _ = manager()
    mgr.sessions["s"] = session("s", 600)
    mgr._close = lambda session_id, dispute=False: settling()  # type: ignore[method-assign,assignment]
    seen: list[ConsumerSession | None] = []

    async def settling() -> dict[str, Any]:
        seen.append(mgr.current("0xmodel"))
        return {}

    await SessionManager.close(mgr, "s")
    assert seen == [None], "a prompt sent now would race the close transaction"
    assert mgr.current("0xmodel") is mgr.sessions["s"], "(it was still open: close is faked)"
