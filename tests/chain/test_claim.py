"""claimForProvider: the held share of a disputed session, once, after the dispute window."""

from __future__ import annotations

from proxy_router.chain.marketplace import Marketplace

from .helpers import (
    DAY,
    ChainHandle,
    Ledger,
    Offer,
    addr,
    close_by_provider,
    close_disputed,
    close_settled,
    hex32,
    latest_timestamp,
    open_session,
    reverts,
    same_address,
    set_next_block_timestamp,
)


async def disputed_session(chain: ChainHandle, provider: Marketplace, user: Marketplace,
                           offer: Offer) -> str:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    chain.increase_time(600)
    await close_disputed(user, session_id)
    return session_id


async def test_claim_after_the_dispute_window_pays_exactly_the_held_amount(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id = await disputed_session(chain, provider, user, offer)
    held = (await user.get_session(session_id)).held
    assert held > 0
    chain.increase_time(DAY + 1)
    ledger = await Ledger(user, user=addr(user), provider=addr(provider)).open()

    tx = await provider.claim_for_provider(session_id)

    event = tx.event("ProviderClaimed")
    assert same_address(event["provider"], addr(provider))
    assert hex32(event["sessionId"]) == session_id
    assert event["amount"] == held
    assert await ledger.deltas() == {"contract": -held, "fee_recipient": 0, "user": 0,
                                     "provider": held}
    session = await user.get_session(session_id)
    assert (session.claimed, session.held) == (True, 0)
    assert session.provider_earned == held


async def test_claim_is_possible_exactly_at_release_time(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id = await disputed_session(chain, provider, user, offer)
    release_at = (await user.get_session(session_id)).release_at
    set_next_block_timestamp(chain, release_at)

    # Explicit gas: estimation would run at the latest block's time, one second early.
    await provider.client.transact(provider.contract, "claimForProvider",
                                   bytes.fromhex(session_id[2:]), gas=200_000)

    assert await latest_timestamp(user) == release_at
    assert (await user.get_session(session_id)).claimed is True


async def test_claim_rejects_before_the_dispute_window_has_passed(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id = await disputed_session(chain, provider, user, offer)
    release_at = (await user.get_session(session_id)).release_at
    chain.increase_time(DAY - 3600)
    with reverts("ClaimNotReleased", releaseAt=release_at):
        await provider.claim_for_provider(session_id)


async def test_claim_rejects_a_second_claim(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id = await disputed_session(chain, provider, user, offer)
    chain.increase_time(DAY + 1)
    await provider.claim_for_provider(session_id)
    with reverts("NothingToClaim"):
        await provider.claim_for_provider(session_id)


async def test_claim_rejects_a_settled_session(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    chain.increase_time(600)
    await close_settled(user, provider, session_id)
    chain.increase_time(DAY + 1)
    with reverts("NothingToClaim"):
        await provider.claim_for_provider(session_id)


async def test_claim_rejects_a_session_the_provider_closed(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    chain.increase_time(600)
    await close_by_provider(provider, session_id)
    with reverts("NothingToClaim"):
        await provider.claim_for_provider(session_id)


async def test_claim_rejects_an_open_session(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    with reverts("NothingToClaim"):
        await provider.claim_for_provider(session_id)


async def test_claim_rejects_a_dispute_closed_in_the_opening_second_as_nothing_earned(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    opened_at = (await user.get_session(session_id)).opened_at
    set_next_block_timestamp(chain, opened_at)
    await close_disputed(user, session_id)
    session = await user.get_session(session_id)
    assert session.closed_at == opened_at
    assert (session.provider_earned, session.held) == (0, 0)
    chain.increase_time(DAY + 1)
    with reverts("NothingToClaim"):
        await provider.claim_for_provider(session_id)


async def test_claim_rejects_anyone_but_the_sessions_provider(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, other: Marketplace,
    offer: Offer,
) -> None:
    session_id = await disputed_session(chain, provider, user, offer)
    chain.increase_time(DAY + 1)
    for caller in (user, other):
        with reverts("NotSessionProvider"):
            await caller.claim_for_provider(session_id)


async def test_claim_rejects_an_unknown_session(provider: Marketplace) -> None:
    unknown = "0x" + "ef" * 32
    with reverts("SessionNotFound", sessionId=unknown):
        await provider.claim_for_provider(unknown)
