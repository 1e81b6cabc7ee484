"""The hot paths stay within docs/DESIGN.md §6: openSession <= 200k gas, closeSession <= 150k gas.

bench/gas.py prints the full table; these are the regression guards.
"""

from __future__ import annotations

from proxy_router.chain.marketplace import Marketplace

from .helpers import (
    MOR,
    ChainHandle,
    Offer,
    close_by_provider,
    close_disputed,
    close_settled,
    open_session,
)

OPEN_SESSION_MAX_GAS = 200_000
CLOSE_SESSION_MAX_GAS = 150_000


async def test_open_session_costs_at_most_200k_gas(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    await user.client.transact(user.token, "approve", user.address, 1_000 * MOR)
    first = (await open_session(user, provider, offer.bid_id))[1].gas_used
    subsequent = (await open_session(user, provider, offer.bid_id))[1].gas_used
    assert first <= OPEN_SESSION_MAX_GAS
    assert subsequent <= OPEN_SESSION_MAX_GAS


async def test_close_session_costs_at_most_150k_gas_on_every_path(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    await user.client.transact(user.token, "approve", user.address, 1_000 * MOR)
    ids = [(await open_session(user, provider, offer.bid_id))[0] for _ in range(4)]
    chain.increase_time(600)
    gas = {
        "settled (first stats)": (await close_settled(user, provider, ids[0])).gas_used,
        "settled": (await close_settled(user, provider, ids[1])).gas_used,
        "disputed": (await close_disputed(user, ids[2])).gas_used,
        "provider": (await close_by_provider(provider, ids[3])).gas_used,
    }
    assert all(g <= CLOSE_SESSION_MAX_GAS for g in gas.values()), gas
