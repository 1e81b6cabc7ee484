"""Every wei of a session's escrow is accounted for, on every settlement path.

For each path: escrow in == provider paid + user refunded + held; the exact MOR deltas of the
user, the provider, the contract and the fee recipient; and their total is conserved.
Expectations come from block timestamps read back from the chain (anvil's clock also runs in
real time), never from the wall clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_router.chain.client import TxResult
from proxy_router.chain.marketplace import Marketplace

from .helpers import (
    DAY,
    ONE_HOUR_STAKE,
    PRICE,
    PROVIDER,
    USER,
    ChainHandle,
    Ledger,
    Offer,
    addr,
    close_by_provider,
    close_disputed,
    close_settled,
    earned,
    onboard,
    open_session,
    reverts,
)

MAX_DURATION = 7 * DAY
MIN_PRICE = 10**10


@dataclass
class Settlement:
    stake: int
    session: dict[str, Any]
    settled_event: dict[str, Any]
    claimed: int  # paid by claimForProvider (0 when there was no claim)


async def settle(chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
                 *, stake: int, elapsed: int, closer: str, claim: bool) -> tuple[
                     Settlement, dict[str, int]]:
    """Open, let ``elapsed`` seconds pass, close as ``closer`` (settled / disputed / provider),
    optionally claim after the dispute window; check conservation at every step and return the
    settlement and the net MOR deltas of the whole run."""
    ledger = await Ledger(user, user=addr(user), provider=addr(provider)).open()
    total = await ledger.total()

    session_id, _ = await open_session(user, provider, offer.bid_id, stake)
    assert await ledger.deltas() == {"contract": stake, "fee_recipient": 0, "user": -stake,
                                     "provider": 0}
    assert await ledger.total() == total

    if elapsed:
        chain.increase_time(elapsed)
    closes: dict[str, Callable[[], Awaitable[TxResult]]] = {
        "settled": lambda: close_settled(user, provider, session_id),
        "disputed": lambda: close_disputed(user, session_id),
        "provider": lambda: close_by_provider(provider, session_id),
    }
    tx = await closes[closer]()
    assert await ledger.total() == total

    claimed = 0
    if claim:
        chain.increase_time(DAY + 1)
        if (await user.get_session(session_id)).held == 0:  # closed in the opening second
            with reverts("NothingToClaim"):
                await provider.claim_for_provider(session_id)
        else:
            tx_claim = await provider.claim_for_provider(session_id)
            claimed = tx_claim.event("ProviderClaimed")["amount"]
        assert await ledger.total() == total

    session = await user.get_session(session_id)
    return Settlement(stake, session, tx.event("SessionSettled"), claimed), await ledger.deltas()


def assert_accounted(s: Settlement, deltas: dict[str, int]) -> None:
    """The bookkeeping rules every settled session obeys."""
    provider_share = earned(s.session)
    ev = s.settled_event
    assert (ev["providerEarned"], ev["userRefund"]) == (provider_share,
                                                        s.stake - provider_share)
    assert (s.session.provider_earned, s.session.user_refund) == (
        ev["providerEarned"], ev["userRefund"])
    # escrow in == provider paid + user refunded + held
    paid = deltas["provider"]
    refunded = deltas["user"] + s.stake
    held = s.session.held
    assert s.stake == paid + refunded + held
    assert deltas["contract"] == held
    assert deltas["fee_recipient"] == 0
    assert sum(deltas.values()) == 0
    assert paid + held == provider_share
    assert refunded == s.stake - provider_share


PATHS = {
    # name: (elapsed seconds, closer, claim)
    "settled_by_the_user_mid_session": (900, "settled", False),
    "disputed_and_still_held": (900, "disputed", False),
    "disputed_then_claimed_after_the_window": (900, "disputed", True),
    "closed_by_the_provider_after_expiry": (2 * 3600, "provider", False),
    "closed_early_by_the_provider": (900, "provider", False),
    "settled_by_the_user_long_after_the_end": (10 * DAY, "settled", False),
    "disputed_long_after_the_end_then_claimed": (10 * DAY, "disputed", True),
}


@pytest.mark.parametrize("path", list(PATHS))
async def test_every_wei_of_the_escrow_is_accounted_for(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer, path: str,
) -> None:
    elapsed, closer, claim = PATHS[path]
    stake = ONE_HOUR_STAKE + PRICE - 1  # a remainder below one second's price

    s, deltas = await settle(chain, provider, user, offer, stake=stake, elapsed=elapsed,
                             closer=closer, claim=claim)

    assert_accounted(s, deltas)
    used = min(s.session.closed_at, s.session.ends_at) - s.session.opened_at
    assert used == min(s.session.closed_at - s.session.opened_at, 3600)
    assert used >= min(elapsed, 3600)
    share = used * PRICE
    if closer == "disputed" and not claim:
        assert deltas == {"contract": share, "fee_recipient": 0, "user": -share, "provider": 0}
        assert s.session.held == share
    else:
        assert deltas == {"contract": 0, "fee_recipient": 0, "user": -share, "provider": share}
        assert s.session.held == 0
        assert s.claimed == (share if claim else 0)
    if elapsed > 3600:  # past endsAt: the full staked duration, the remainder back to the user
        assert share == ONE_HOUR_STAKE
        assert s.session.user_refund == PRICE - 1


@st.composite
def sessions(draw: st.DrawFn) -> dict[str, Any]:
    price = draw(st.integers(MIN_PRICE, 3 * 10**19))
    duration = draw(st.integers(300, min(MAX_DURATION, 9 * 10**21 // price)))
    remainder = draw(st.integers(0, price - 1))
    elapsed = draw(st.integers(0, duration + 3600))
    closer = draw(st.sampled_from(["settled", "disputed", "provider"]))
    claim = closer == "disputed" and draw(st.booleans())
    return {"price": price, "stake": duration * price + remainder, "elapsed": elapsed,
            "closer": closer, "claim": claim}


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=sessions())
async def test_escrow_is_conserved_for_any_price_duration_and_elapsed_time(
    chain_factory: Callable[[], AbstractAsyncContextManager[ChainHandle]], case: dict[str, Any],
) -> None:
    async with chain_factory() as chain:
        provider, user = await chain.market(PROVIDER), await chain.market(USER)
        offer = await onboard(provider, price=case["price"])

        s, deltas = await settle(chain, provider, user, offer, stake=case["stake"],
                                 elapsed=case["elapsed"], closer=case["closer"],
                                 claim=case["claim"])

        assert_accounted(s, deltas)
        assert s.session.closed_at - s.session.opened_at >= case["elapsed"]
        assert s.session.ends_at - s.session.opened_at == case["stake"] // case["price"]
