"""closeSession: who may close with whose receipt, what each close records, and refusals."""

from __future__ import annotations

from proxy_router.chain.encoding import Receipt, sign_blob
from proxy_router.chain.marketplace import Marketplace

from .helpers import (
    DAY,
    ONE_HOUR_STAKE,
    PRICE,
    ChainHandle,
    Offer,
    account,
    addr,
    close_by_provider,
    close_disputed,
    close_settled,
    hex32,
    latest_timestamp,
    open_session,
    reverts,
    same_address,
    sign_receipt,
)


async def test_user_closes_with_the_providers_receipt_and_the_session_settles(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    chain.increase_time(600)

    tx = await close_settled(user, provider, session_id)

    session = await user.get_session(session_id)
    assert session.closed_at == await latest_timestamp(user)
    elapsed = session.closed_at - session.opened_at
    assert 600 <= elapsed < 3600
    assert session.provider_earned == elapsed * PRICE
    assert session.user_refund == ONE_HOUR_STAKE - elapsed * PRICE
    assert session.held == 0
    assert session.release_at == 0
    assert (session.closed, session.disputed, session.claimed) == (True, False, False)
    closed = tx.event("SessionClosed")
    assert hex32(closed["sessionId"]) == session_id
    assert same_address(closed["user"], addr(user))
    assert same_address(closed["provider"], offer.provider)
    assert tx.event("SessionSettled") == {
        "sessionId": bytes.fromhex(session_id[2:]),
        "providerEarned": elapsed * PRICE,
        "userRefund": ONE_HOUR_STAKE - elapsed * PRICE,
        "held": 0,
        "disputed": False,
    }


async def test_user_closing_with_its_own_receipt_disputes_and_holds_the_providers_share(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    chain.increase_time(600)

    tx = await close_disputed(user, session_id)

    session = await user.get_session(session_id)
    elapsed = session.closed_at - session.opened_at
    assert session.provider_earned == elapsed * PRICE
    assert session.held == elapsed * PRICE
    assert session.user_refund == ONE_HOUR_STAKE - elapsed * PRICE
    assert session.release_at == session.closed_at + await user.param("disputeWindow")
    assert await user.param("disputeWindow") == DAY
    assert (session.closed, session.disputed, session.claimed) == (True, True, False)
    settled = tx.event("SessionSettled")
    assert (settled["providerEarned"], settled["userRefund"], settled["held"],
            settled["disputed"]) == (elapsed * PRICE, ONE_HOUR_STAKE - elapsed * PRICE,
                                     elapsed * PRICE, True)


async def test_provider_closes_an_expired_session_and_earns_the_full_duration(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    stake = ONE_HOUR_STAKE + PRICE // 2  # half a second of price is never earned
    session_id, _ = await open_session(user, provider, offer.bid_id, stake)
    chain.increase_time(2 * 3600)

    tx = await close_by_provider(provider, session_id)

    session = await user.get_session(session_id)
    assert session.closed_at > session.ends_at
    assert session.provider_earned == ONE_HOUR_STAKE
    assert session.user_refund == PRICE // 2
    assert (session.disputed, session.held) == (False, 0)
    assert tx.event("SessionSettled")["providerEarned"] == ONE_HOUR_STAKE


async def test_provider_may_close_early_and_earns_only_the_elapsed_time(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    chain.increase_time(900)

    await close_by_provider(provider, session_id)

    session = await user.get_session(session_id)
    elapsed = session.closed_at - session.opened_at
    assert 900 <= elapsed < 3600
    assert session.provider_earned == elapsed * PRICE
    assert session.user_refund == ONE_HOUR_STAKE - elapsed * PRICE


async def test_close_long_after_the_end_caps_earnings_at_the_staked_duration(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    chain.increase_time(30 * DAY)

    tx = await close_settled(user, provider, session_id)

    session = await user.get_session(session_id)
    assert session.closed_at - session.opened_at >= 30 * DAY
    assert session.provider_earned == ONE_HOUR_STAKE
    assert session.user_refund == 0
    assert tx.event("SessionSettled")["userRefund"] == 0


async def test_close_rejects_a_user_submitted_receipt_signed_by_a_stranger(
    provider: Marketplace, user: Marketplace, other: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    with reverts("InvalidReceiptSigner"):
        await user.close_session(*await sign_receipt(other, session_id))


async def test_close_rejects_a_provider_submitted_receipt_not_signed_by_the_provider(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    with reverts("InvalidReceiptSigner"):
        await provider.close_session(*await sign_receipt(user, session_id))


async def test_close_rejects_a_malformed_receipt_signature(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    receipt, signature = await sign_receipt(provider, session_id)
    with reverts("InvalidReceiptSigner"):
        await user.close_session(receipt, signature[:64])


async def test_close_rejects_a_caller_who_is_neither_user_nor_provider(
    provider: Marketplace, user: Marketplace, other: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    with reverts("NotSessionParty"):
        await other.close_session(*await sign_receipt(provider, session_id))


async def test_close_rejects_an_already_closed_session(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    await close_settled(user, provider, session_id)
    with reverts("SessionAlreadyClosed", sessionId=session_id):
        await close_settled(user, provider, session_id)
    with reverts("SessionAlreadyClosed", sessionId=session_id):
        await close_by_provider(provider, session_id)


async def test_close_rejects_an_unknown_session(provider: Marketplace,
                                                user: Marketplace) -> None:
    unknown = "0x" + "cd" * 32
    with reverts("SessionNotFound", sessionId=unknown):
        await close_settled(user, provider, unknown)


async def test_close_rejects_a_receipt_for_another_chain(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    with reverts("WrongChainId", expected=user.client.chain_id, given=5):
        await user.close_session(*await sign_receipt(provider, session_id, chain_id=5))


async def test_close_rejects_a_receipt_of_the_wrong_length(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    receipt, _ = await sign_receipt(provider, session_id)
    for blob in (receipt[:-1], receipt + b"\x00", receipt[:64]):
        with reverts("InvalidReceipt"):
            await user.close_session(blob, sign_blob(account(provider), blob))


async def test_provider_can_still_close_sessions_after_deleting_its_bid_and_deregistering(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    session_id, _ = await open_session(user, provider, offer.bid_id)
    await provider.client.transact(provider.contract, "deleteModelBid",
                                   bytes.fromhex(offer.bid_id[2:]))
    await provider.deregister_provider()
    chain.increase_time(600)

    await close_settled(user, provider, session_id)

    session = await user.get_session(session_id)
    assert session.provider_earned == (session.closed_at - session.opened_at) * PRICE


async def test_receipt_encoding_round_trips() -> None:
    receipt = Receipt(b"\x11" * 32, 31337, 1_700_000_000, 2**33, 7, 3, 4)
    decoded = Receipt.decode(receipt.encode())
    assert decoded.tps_x1000 == 2**32 - 1  # uint32 fields saturate
    assert (decoded.session_id, decoded.prompt_tokens, decoded.completion_tokens) == (
        b"\x11" * 32, 3, 4)
