"""Owner-only parameter setters: each updates its parameter and emits its event; bounds hold."""

from __future__ import annotations

from typing import Any

import pytest

from proxy_router.chain.marketplace import Marketplace
from proxy_router.dev.anvil import dev_address

from .helpers import (
    DAY,
    FEE_RECIPIENT,
    MOR,
    OTHER,
    PRICE,
    PROVIDER_STAKE,
    ChainHandle,
    Ledger,
    Offer,
    addr,
    close_disputed,
    onboard,
    open_session,
    register_model,
    reverts,
    sign_approval,
)

U96_MAX = 2**96 - 1
U32_MAX = 2**32 - 1

async def test_deployment_starts_with_the_documented_parameters(chain: ChainHandle,
                                                                 owner: Marketplace) -> None:
    expected = {
        "providerMinStake": 2 * MOR // 10, "modelMinStake": MOR // 10, "bidFee": 3 * MOR // 10,
        "minPricePerSecond": 10**10, "maxPricePerSecond": 10**20, "approvalTtl": 600,
        "minSessionDuration": 300, "maxSessionDuration": 7 * DAY, "disputeWindow": DAY,
        "APPROVAL_FUTURE_TOLERANCE": 60,
    }
    assert {name: await owner.param(name) for name in expected} == expected
    call = owner.client.call
    assert await call(owner.contract, "owner") == addr(owner)
    assert await call(owner.contract, "feeRecipient") == dev_address(FEE_RECIPIENT)
    assert await call(owner.contract, "morToken") == chain.deployment.mor_token_address


async def test_deployment_rejects_a_zero_token_address(owner: Marketplace) -> None:
    with reverts("ZeroAddress"):
        await owner.client.deploy("Marketplace", "0x" + "00" * 20, dev_address(FEE_RECIPIENT))


async def test_deployment_rejects_a_zero_fee_recipient(owner: Marketplace) -> None:
    with reverts("ZeroAddress"):
        await owner.client.deploy("Marketplace", owner.token.address, "0x" + "00" * 20)


# setter, arguments, event, {event field / public getter: value}
SETTERS: list[tuple[str, tuple[Any, ...], str, dict[str, Any]]] = [
    ("setProviderMinStake", (5 * MOR,), "ProviderMinStakeUpdated", {"providerMinStake": 5 * MOR}),
    ("setModelMinStake", (0,), "ModelMinStakeUpdated", {"modelMinStake": 0}),
    ("setBidFee", (7,), "BidFeeUpdated", {"bidFee": 7}),
    ("setPriceBounds", (1, U96_MAX), "PriceBoundsUpdated",
     {"minPricePerSecond": 1, "maxPricePerSecond": U96_MAX}),
    ("setPriceBounds", (PRICE, PRICE), "PriceBoundsUpdated",
     {"minPricePerSecond": PRICE, "maxPricePerSecond": PRICE}),
    ("setFeeRecipient", (dev_address(OTHER),), "FeeRecipientUpdated",
     {"feeRecipient": dev_address(OTHER)}),
    ("setApprovalTtl", (30,), "ApprovalTtlUpdated", {"approvalTtl": 30}),
    ("setSessionDurationBounds", (60, U32_MAX), "SessionDurationBoundsUpdated",
     {"minSessionDuration": 60, "maxSessionDuration": U32_MAX}),
    ("setSessionDurationBounds", (600, 600), "SessionDurationBoundsUpdated",
     {"minSessionDuration": 600, "maxSessionDuration": 600}),
    ("setDisputeWindow", (0,), "DisputeWindowUpdated", {"disputeWindow": 0}),
]


@pytest.mark.parametrize(("setter", "args", "event", "values"), SETTERS,
                         ids=[f"{s[0]}{s[1]}"[:60] for s in SETTERS])
async def test_owner_setter_updates_the_parameter_and_emits_its_event(
    owner: Marketplace, setter: str, args: tuple[Any, ...], event: str, values: dict[str, Any],
) -> None:
    tx = await owner.client.transact(owner.contract, setter, *args)

    assert tx.events == [(event, values)]
    for getter, value in values.items():
        got = await owner.client.call(owner.contract, getter)
        assert got == value


@pytest.mark.parametrize(("setter", "args"), sorted({(s[0], s[1]) for s in SETTERS}))
async def test_owner_setter_rejects_any_other_caller(
    other: Marketplace, provider: Marketplace, setter: str, args: tuple[Any, ...],
) -> None:
    for caller in (other, provider):
        with reverts("OwnableUnauthorizedAccount", account=addr(caller)):
            await caller.client.transact(caller.contract, setter, *args)


@pytest.mark.parametrize(("setter", "args", "error"), [
    ("setPriceBounds", (0, PRICE), "InvalidPriceBounds"),
    ("setPriceBounds", (PRICE + 1, PRICE), "InvalidPriceBounds"),
    ("setSessionDurationBounds", (0, 600), "InvalidDurationBounds"),
    ("setSessionDurationBounds", (601, 600), "InvalidDurationBounds"),
    ("setApprovalTtl", (0,), "InvalidApprovalTtl"),
    ("setFeeRecipient", ("0x" + "00" * 20,), "ZeroAddress"),
])
async def test_owner_setter_rejects_invalid_values(
    owner: Marketplace, setter: str, args: tuple[Any, ...], error: str,
) -> None:
    with reverts(error):
        await owner.client.transact(owner.contract, setter, *args)


async def test_invalid_bounds_errors_carry_the_rejected_values(owner: Marketplace) -> None:
    with reverts("InvalidPriceBounds", minPricePerSecond=5, maxPricePerSecond=4):
        await owner.client.transact(owner.contract, "setPriceBounds", 5, 4)
    with reverts("InvalidDurationBounds", minSessionDuration=9, maxSessionDuration=8):
        await owner.client.transact(owner.contract, "setSessionDurationBounds", 9, 8)


async def test_new_provider_minimum_stake_applies_to_the_next_registration(
    owner: Marketplace, provider: Marketplace,
) -> None:
    await owner.client.transact(owner.contract, "setProviderMinStake", 2 * PROVIDER_STAKE)
    with reverts("StakeTooLow", required=2 * PROVIDER_STAKE, given=PROVIDER_STAKE):
        await provider.register_provider(PROVIDER_STAKE, "p:1")


async def test_new_model_minimum_stake_applies_to_the_next_registration(
    owner: Marketplace, provider: Marketplace,
) -> None:
    await owner.client.transact(owner.contract, "setModelMinStake", MOR)
    with reverts("StakeTooLow", required=MOR, given=MOR - 1):
        await register_model(provider, stake=MOR - 1)


async def test_new_bid_fee_goes_to_the_new_fee_recipient(
    owner: Marketplace, provider: Marketplace,
) -> None:
    await owner.client.transact(owner.contract, "setBidFee", 12_345)
    await owner.client.transact(owner.contract, "setFeeRecipient", dev_address(OTHER))
    await provider.register_provider(PROVIDER_STAKE, "p:1")
    model_id, _ = await register_model(provider)
    ledger = await Ledger(provider, provider=addr(provider), new_recipient=dev_address(OTHER)
                          ).open()

    await provider.post_bid(model_id, PRICE)

    assert await ledger.deltas() == {"contract": 0, "fee_recipient": 0,
                                     "new_recipient": 12_345, "provider": -12_345}


async def test_zero_bid_fee_posts_bids_for_free(owner: Marketplace,
                                                provider: Marketplace) -> None:
    await owner.client.transact(owner.contract, "setBidFee", 0)
    await provider.register_provider(PROVIDER_STAKE, "p:1")
    model_id, _ = await register_model(provider)
    ledger = await Ledger(provider, provider=addr(provider)).open()

    _, tx = await provider.post_bid(model_id, PRICE)

    assert [name for name, _ in tx.events] == ["BidPosted"]
    assert await ledger.deltas() == {"contract": 0, "fee_recipient": 0, "provider": 0}


async def test_new_price_bounds_apply_to_the_next_bid(owner: Marketplace,
                                                      provider: Marketplace) -> None:
    await owner.client.transact(owner.contract, "setPriceBounds", 2 * PRICE, 3 * PRICE)
    with reverts("PriceOutOfRange", pricePerSecond=PRICE, minPricePerSecond=2 * PRICE,
                 maxPricePerSecond=3 * PRICE):
        await onboard(provider, price=PRICE)


async def test_new_approval_ttl_applies_to_the_next_open(
    owner: Marketplace, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    await owner.client.transact(owner.contract, "setApprovalTtl", 60)
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user), age=120)
    with reverts("ApprovalExpired"):
        await user.open_session(3600 * PRICE, approval, signature)


async def test_new_duration_bounds_apply_to_the_next_open(
    owner: Marketplace, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    await owner.client.transact(owner.contract, "setSessionDurationBounds", 60, 120)
    short, _ = await open_session(user, provider, offer.bid_id, 60 * PRICE)
    brief = await user.get_session(short)
    assert brief.ends_at - brief.opened_at == 60
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user), age=5)
    with reverts("SessionDurationOutOfRange", duration=121):
        await user.open_session(121 * PRICE, approval, signature)


async def test_new_dispute_window_applies_to_the_next_disputed_close(
    chain: ChainHandle, owner: Marketplace, provider: Marketplace, user: Marketplace,
    offer: Offer,
) -> None:
    await owner.client.transact(owner.contract, "setDisputeWindow", 2 * DAY)
    session_id, _ = await open_session(user, provider, offer.bid_id)
    chain.increase_time(60)
    await close_disputed(user, session_id)
    session = await user.get_session(session_id)
    assert session.release_at == session.closed_at + 2 * DAY


async def test_zero_dispute_window_lets_the_provider_claim_at_once(
    chain: ChainHandle, owner: Marketplace, provider: Marketplace, user: Marketplace,
    offer: Offer,
) -> None:
    await owner.client.transact(owner.contract, "setDisputeWindow", 0)
    session_id, _ = await open_session(user, provider, offer.bid_id)
    chain.increase_time(60)
    await close_disputed(user, session_id)
    held = (await user.get_session(session_id)).held

    tx = await provider.claim_for_provider(session_id)

    assert tx.event("ProviderClaimed")["amount"] == held
