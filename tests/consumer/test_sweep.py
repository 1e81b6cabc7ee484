"""The consumer's sweeper: which sessions it settles, and when."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from eth_account import Account

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
