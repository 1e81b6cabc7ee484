"""openSession: escrow, ids, lists, and every way an approval or a stake can be refused."""

from __future__ import annotations

from proxy_router.chain.encoding import sign_blob
from proxy_router.chain.marketplace import Marketplace

from .helpers import (
    DAY,
    MOR,
    ONE_HOUR_STAKE,
    PRICE,
    ChainHandle,
    Ledger,
    Offer,
    account,
    addr,
    as_view,
    close_settled,
    hex32,
    latest_timestamp,
    onboard,
    open_session,
    reverts,
    same_address,
    session_id_of,
    sign_approval,
)

TTL = 600
FUTURE_TOLERANCE = 60


async def sessions_of(market: Marketplace, fn: str, who: str) -> list[str]:
    ids, _ = await market.client.call(market.contract, fn, who, 0, 1000)
    return [hex32(i) for i in ids]


async def test_open_session_escrows_the_stake_and_records_the_session(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    ledger = await Ledger(user, user=addr(user), provider=addr(provider)).open()
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user))
    stake = ONE_HOUR_STAKE + 123  # the remainder below one second of price stays escrowed

    session_id, tx = await user.open_session(stake, approval, signature)

    assert session_id == session_id_of(addr(user), offer.provider, offer.bid_id, approval)
    event = tx.event("SessionOpened")
    assert same_address(event["user"], addr(user))
    assert same_address(event["provider"], offer.provider)
    opened_at = await latest_timestamp(user)
    assert as_view(await user.get_session(session_id)) == {
        "user": addr(user),
        "provider": offer.provider,
        "bidId": offer.bid_id,
        "modelId": offer.model_id,
        "stake": stake,
        "pricePerSecond": PRICE,
        "openedAt": opened_at,
        "endsAt": opened_at + 3600,
        "closedAt": 0,
        "providerEarned": 0,
        "userRefund": 0,
        "held": 0,
        "releaseAt": 0,
        "disputed": False,
        "closed": False,
        "claimed": False,
    }
    assert await ledger.deltas() == {"contract": stake, "fee_recipient": 0, "user": -stake,
                                     "provider": 0}


async def test_open_session_lists_the_session_for_its_user_and_its_provider(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    before_user = await sessions_of(user, "getSessionsByUser", addr(user))
    before_provider = await sessions_of(user, "getSessionsByProvider", offer.provider)

    first, _ = await open_session(user, provider, offer.bid_id)
    second, _ = await open_session(user, provider, offer.bid_id)

    assert await sessions_of(user, "getSessionsByUser", addr(user)) == [
        *before_user, first, second]
    assert await sessions_of(user, "getSessionsByProvider", offer.provider) == [
        *before_provider, first, second]
    info = await user.get_provider(offer.provider)
    assert info.session_count == len(before_provider) + 2


async def test_open_session_accepts_an_approval_just_inside_the_ttl(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user), age=TTL - 30)
    session_id, _ = await user.open_session(ONE_HOUR_STAKE, approval, signature)
    assert (await user.get_session(session_id)).opened_at != 0


async def test_open_session_accepts_an_approval_dated_slightly_ahead_of_the_chain(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    assert await user.param("APPROVAL_FUTURE_TOLERANCE") == FUTURE_TOLERANCE
    approval, signature = await sign_approval(
        provider, offer.bid_id, addr(user), timestamp=await latest_timestamp(user) + 30)
    session_id, _ = await user.open_session(ONE_HOUR_STAKE, approval, signature)
    assert (await user.get_session(session_id)).opened_at != 0


async def test_open_session_accepts_the_session_duration_bounds_themselves(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    shortest, _ = await open_session(user, provider, offer.bid_id, 300 * PRICE + PRICE - 1)
    longest, _ = await open_session(user, provider, offer.bid_id, 7 * DAY * PRICE + PRICE - 1)
    short, long = await user.get_session(shortest), await user.get_session(longest)
    assert short.ends_at - short.opened_at == 300
    assert long.ends_at - long.opened_at == 7 * DAY


async def test_open_session_accepts_a_signature_with_a_0_or_1_recovery_id(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user))
    assert signature[64] in (27, 28)
    session_id, _ = await user.open_session(ONE_HOUR_STAKE, approval,
                                            signature[:64] + bytes([signature[64] - 27]))
    assert (await user.get_session(session_id)).opened_at != 0


async def test_open_session_rejects_an_approval_signed_by_someone_other_than_the_provider(
    other: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(other, offer.bid_id, addr(user))
    with reverts("InvalidApprovalSigner"):
        await user.open_session(ONE_HOUR_STAKE, approval, signature)


async def test_open_session_rejects_a_malformed_signature(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user))
    with reverts("InvalidApprovalSigner"):
        await user.open_session(ONE_HOUR_STAKE, approval, signature[:64])
    with reverts("InvalidApprovalSigner"):
        await user.open_session(ONE_HOUR_STAKE, approval, b"\x00" * 65)


async def test_open_session_rejects_an_approval_for_a_deleted_bid(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user))
    await provider.client.transact(provider.contract, "deleteModelBid",
                                   bytes.fromhex(offer.bid_id[2:]))
    with reverts("BidNotActive", bidId=offer.bid_id):
        await user.open_session(ONE_HOUR_STAKE, approval, signature)


async def test_open_session_rejects_an_approval_for_a_replaced_bid(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user))
    await onboard(provider, model_id=offer.model_id, price=2 * PRICE)
    with reverts("BidNotActive", bidId=offer.bid_id):
        await user.open_session(ONE_HOUR_STAKE, approval, signature)


async def test_open_session_rejects_an_approval_for_an_unknown_bid(
    provider: Marketplace, user: Marketplace,
) -> None:
    unknown = "0x" + "ab" * 32
    approval, signature = await sign_approval(provider, unknown, addr(user))
    with reverts("BidNotActive", bidId=unknown):
        await user.open_session(ONE_HOUR_STAKE, approval, signature)


async def test_open_session_rejects_an_approval_for_another_chain(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user), chain_id=1)
    with reverts("WrongChainId", expected=user.client.chain_id, given=1):
        await user.open_session(ONE_HOUR_STAKE, approval, signature)


async def test_open_session_rejects_an_approval_issued_to_another_user(
    provider: Marketplace, user: Marketplace, other: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user))
    with reverts("ApprovalForAnotherUser"):
        await other.open_session(ONE_HOUR_STAKE, approval, signature)


async def test_open_session_rejects_an_approval_older_than_ttl(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    assert await user.param("approvalTtl") == TTL
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user), age=TTL + 1)
    with reverts("ApprovalExpired"):
        await user.open_session(ONE_HOUR_STAKE, approval, signature)


async def test_open_session_rejects_an_approval_that_expired_while_waiting(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user))
    chain.increase_time(TTL + 60)
    with reverts("ApprovalExpired"):
        await user.open_session(ONE_HOUR_STAKE, approval, signature)


async def test_open_session_rejects_an_approval_timestamped_in_milliseconds(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    now_ms = await latest_timestamp(user) * 1000
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user),
                                              timestamp=now_ms)
    with reverts("ApprovalFromFuture"):
        await user.open_session(ONE_HOUR_STAKE, approval, signature)


async def test_open_session_rejects_an_approval_dated_beyond_the_future_tolerance(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    ahead = await latest_timestamp(user) + FUTURE_TOLERANCE + 120
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user),
                                              timestamp=ahead)
    with reverts("ApprovalFromFuture"):
        await user.open_session(ONE_HOUR_STAKE, approval, signature)


async def test_open_session_rejects_a_replayed_approval(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user))
    await user.open_session(ONE_HOUR_STAKE, approval, signature)
    with reverts("ApprovalAlreadyUsed"):
        await user.open_session(ONE_HOUR_STAKE, approval, signature)


async def test_open_session_rejects_a_replayed_approval_even_after_the_session_closed(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user))
    session_id, _ = await user.open_session(ONE_HOUR_STAKE, approval, signature)
    await close_settled(user, provider, session_id)
    with reverts("ApprovalAlreadyUsed"):
        await user.open_session(ONE_HOUR_STAKE, approval, signature)


async def test_identical_approvals_issued_in_the_same_second_open_only_one_session(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    now = await latest_timestamp(user)
    first = await sign_approval(provider, offer.bid_id, addr(user), timestamp=now)
    same = await sign_approval(provider, offer.bid_id, addr(user), timestamp=now)
    next_second = await sign_approval(provider, offer.bid_id, addr(user), timestamp=now - 1)
    assert first[0] == same[0]

    await user.open_session(ONE_HOUR_STAKE, *first)
    with reverts("ApprovalAlreadyUsed"):
        await user.open_session(ONE_HOUR_STAKE, *same)
    session_id, _ = await user.open_session(ONE_HOUR_STAKE, *next_second)
    assert (await user.get_session(session_id)).opened_at != 0


async def test_open_session_rejects_the_provider_as_its_own_user(
    provider: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(provider))
    with reverts("ProviderCannotBeUser"):
        await provider.open_session(ONE_HOUR_STAKE, approval, signature)


async def test_open_session_rejects_a_stake_buying_less_than_five_minutes(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user))
    with reverts("SessionDurationOutOfRange", duration=299):
        await user.open_session(300 * PRICE - 1, approval, signature)


async def test_open_session_rejects_a_stake_buying_more_than_seven_days(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user))
    with reverts("SessionDurationOutOfRange", duration=7 * DAY + 1):
        await user.open_session((7 * DAY + 1) * PRICE, approval, signature)


async def test_open_session_rejects_an_approval_of_the_wrong_length(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, _ = await sign_approval(provider, offer.bid_id, addr(user))
    for blob in (approval[:-1], approval + b"\x00", b""):
        with reverts("InvalidApproval"):
            await user.open_session(ONE_HOUR_STAKE, blob, sign_blob(account(provider), blob))


async def test_open_session_without_allowance_reverts_with_the_token_error(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user))
    with reverts("ERC20InsufficientAllowance", spender=user.address, allowance=0,
                 needed=ONE_HOUR_STAKE):
        await user.client.transact(user.contract, "openSession", ONE_HOUR_STAKE, approval,
                                   signature)


async def test_open_session_rejects_a_stake_above_the_users_balance(
    provider: Marketplace, user: Marketplace, other: Marketplace, offer: Offer,
) -> None:
    balance = await user.mor_balance(addr(user))
    await user.client.transact(user.token, "transfer", addr(other), balance - MOR)
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user))
    with reverts("ERC20InsufficientBalance", sender=addr(user), balance=MOR,
                 needed=ONE_HOUR_STAKE):
        await user.open_session(ONE_HOUR_STAKE, approval, signature)
