"""postModelBid / deleteModelBid: id derivation, fee, replacement, deletion rights."""

from __future__ import annotations

from proxy_router.chain.client import TxResult
from proxy_router.chain.marketplace import Marketplace

from .helpers import (
    BID_FEE,
    PRICE,
    PROVIDER_STAKE,
    Ledger,
    Offer,
    addr,
    as_view,
    bid_id_of,
    hex32,
    latest_timestamp,
    onboard,
    random_base_model_id,
    register_model,
    reverts,
    same_address,
)

MIN_PRICE = 10**10
MAX_PRICE = 10**20
ZERO_ID = "0x" + "00" * 32


async def delete_bid(market: Marketplace, bid_id: str) -> TxResult:
    return await market.client.transact(market.contract, "deleteModelBid",
                                        bytes.fromhex(bid_id[2:]))


async def active_by_model(market: Marketplace, model_id: str) -> list[str]:
    ids, _ = await market.client.call(market.contract, "getActiveBidsByModel",
                                      bytes.fromhex(model_id[2:]), 0, 100)
    return [hex32(i) for i in ids]


async def active_by_provider(market: Marketplace, provider: str) -> list[str]:
    ids, _ = await market.client.call(market.contract, "getActiveBidsByProvider", provider,
                                      0, 100)
    return [hex32(i) for i in ids]


async def active_bid_id(market: Marketplace, provider: str, model_id: str) -> str:
    return hex32(await market.client.call(market.contract, "getActiveBidId", provider,
                                          bytes.fromhex(model_id[2:])))


async def test_first_bid_id_is_keccak_of_provider_model_and_nonce_zero(
    provider: Marketplace,
) -> None:
    await provider.register_provider(PROVIDER_STAKE, "p:1")
    model_id, _ = await register_model(provider)

    bid_id, tx = await provider.post_bid(model_id, PRICE)

    assert bid_id == bid_id_of(addr(provider), model_id, 0)
    event = tx.event("BidPosted")
    assert same_address(event["provider"], addr(provider))
    assert hex32(event["modelId"]) == model_id
    assert as_view(await provider.get_bid(bid_id)) == {
        "provider": addr(provider),
        "modelId": model_id,
        "pricePerSecond": PRICE,
        "nonce": 0,
        "createdAt": await latest_timestamp(provider),
        "deletedAt": 0,
    }


async def test_post_bid_pays_the_bid_fee_to_the_fee_recipient_to_the_wei(
    provider: Marketplace,
) -> None:
    await provider.register_provider(PROVIDER_STAKE, "p:1")
    model_id, _ = await register_model(provider)
    assert await provider.param("bidFee") == BID_FEE
    ledger = await Ledger(provider, provider=addr(provider)).open()

    await provider.post_bid(model_id, PRICE)

    assert await ledger.deltas() == {"contract": 0, "fee_recipient": BID_FEE,
                                     "provider": -BID_FEE}


async def test_post_bid_without_allowance_for_the_fee_reverts_with_the_token_error(
    provider: Marketplace,
) -> None:
    await provider.register_provider(PROVIDER_STAKE, "p:1")
    model_id, _ = await register_model(provider)
    await provider.client.transact(provider.token, "approve", provider.address, 0)
    with reverts("ERC20InsufficientAllowance", needed=BID_FEE):
        await provider.client.transact(provider.contract, "postModelBid",
                                       bytes.fromhex(model_id[2:]), PRICE)


async def test_second_bid_on_the_same_model_replaces_the_first(provider: Marketplace) -> None:
    first = await onboard(provider)

    second_id, tx = await provider.post_bid(first.model_id, 2 * PRICE)

    assert second_id == bid_id_of(addr(provider), first.model_id, 1)
    assert [name for name, _ in tx.events] == ["BidDeleted", "BidPosted", "Transfer"]
    assert hex32(tx.event("BidDeleted")["bidId"]) == first.bid_id
    assert hex32(tx.event("BidPosted")["bidId"]) == second_id
    assert (await provider.get_bid(first.bid_id)).deleted_at == await latest_timestamp(provider)
    assert (await provider.get_bid(second_id)).nonce == 1
    assert await active_bid_id(provider, addr(provider), first.model_id) == second_id
    assert await active_by_model(provider, first.model_id) == [second_id]
    assert await active_by_provider(provider, addr(provider)) == [second_id]
    assert (await provider.get_model(first.model_id)).active_bids == 1
    assert (await provider.get_provider(addr(provider))).active_bids == 1


async def test_bid_after_a_deleted_bid_takes_the_next_nonce(provider: Marketplace) -> None:
    first = await onboard(provider)
    await delete_bid(provider, first.bid_id)

    again, tx = await provider.post_bid(first.model_id, PRICE)

    assert again == bid_id_of(addr(provider), first.model_id, 1)
    assert [name for name, _ in tx.events] == ["BidPosted", "Transfer"]


async def test_provider_deletes_its_bid(provider: Marketplace, offer: Offer) -> None:
    tx = await delete_bid(provider, offer.bid_id)

    event = tx.event("BidDeleted")
    assert same_address(event["provider"], offer.provider)
    assert hex32(event["modelId"]) == offer.model_id
    assert hex32(event["bidId"]) == offer.bid_id
    assert (await provider.get_bid(offer.bid_id)).deleted_at == await latest_timestamp(provider)
    assert await active_bid_id(provider, offer.provider, offer.model_id) == ZERO_ID
    assert await active_by_model(provider, offer.model_id) == []
    assert await active_by_provider(provider, offer.provider) == []


async def test_contract_owner_deletes_any_bid(owner: Marketplace, offer: Offer) -> None:
    tx = await delete_bid(owner, offer.bid_id)

    assert same_address(tx.event("BidDeleted")["provider"], offer.provider)
    assert (await owner.get_bid(offer.bid_id)).deleted_at != 0


async def test_delete_bid_rejects_anyone_but_its_provider_and_the_owner(
    other: Marketplace, offer: Offer,
) -> None:
    with reverts("NotBidOwner"):
        await delete_bid(other, offer.bid_id)


async def test_delete_bid_rejects_an_unknown_bid(provider: Marketplace) -> None:
    unknown = hex32(random_base_model_id())
    with reverts("BidNotActive", bidId=unknown):
        await delete_bid(provider, unknown)


async def test_delete_bid_rejects_an_already_deleted_bid(provider: Marketplace,
                                                         offer: Offer) -> None:
    await delete_bid(provider, offer.bid_id)
    with reverts("BidNotActive", bidId=offer.bid_id):
        await delete_bid(provider, offer.bid_id)


async def test_post_bid_accepts_the_price_bounds_themselves(provider: Marketplace) -> None:
    low = await onboard(provider, price=MIN_PRICE)
    high = await onboard(provider, price=MAX_PRICE)
    assert (await provider.get_bid(low.bid_id)).price_per_second == MIN_PRICE
    assert (await provider.get_bid(high.bid_id)).price_per_second == MAX_PRICE


async def test_post_bid_rejects_a_price_below_the_minimum(provider: Marketplace) -> None:
    with reverts("PriceOutOfRange", pricePerSecond=MIN_PRICE - 1,
                 minPricePerSecond=MIN_PRICE, maxPricePerSecond=MAX_PRICE):
        await onboard(provider, price=MIN_PRICE - 1)


async def test_post_bid_rejects_a_price_above_the_maximum(provider: Marketplace) -> None:
    with reverts("PriceOutOfRange", pricePerSecond=MAX_PRICE + 1):
        await onboard(provider, price=MAX_PRICE + 1)


async def test_post_bid_rejects_an_unregistered_provider(provider: Marketplace,
                                                         other: Marketplace) -> None:
    model_id, _ = await register_model(other)
    with reverts("ProviderNotRegistered"):
        await provider.post_bid(model_id, PRICE)


async def test_post_bid_rejects_a_deregistered_provider(provider: Marketplace) -> None:
    offer = await onboard(provider)
    await delete_bid(provider, offer.bid_id)
    await provider.deregister_provider()
    with reverts("ProviderNotRegistered"):
        await provider.post_bid(offer.model_id, PRICE)


async def test_post_bid_rejects_an_unknown_model(provider: Marketplace) -> None:
    await provider.register_provider(PROVIDER_STAKE, "p:1")
    unknown = hex32(random_base_model_id())
    with reverts("ModelNotActive", modelId=unknown):
        await provider.post_bid(unknown, PRICE)


async def test_post_bid_rejects_a_deregistered_model(provider: Marketplace) -> None:
    await provider.register_provider(PROVIDER_STAKE, "p:1")
    model_id, _ = await register_model(provider)
    await provider.client.transact(provider.contract, "modelDeregister",
                                   bytes.fromhex(model_id[2:]))
    with reverts("ModelNotActive", modelId=model_id):
        await provider.post_bid(model_id, PRICE)


async def test_provider_may_bid_on_a_model_it_does_not_own(provider: Marketplace,
                                                           other: Marketplace) -> None:
    offer = await onboard(provider, model_owner=other)
    assert (await provider.get_model(offer.model_id)).owner == addr(other)
    assert await active_by_model(provider, offer.model_id) == [offer.bid_id]
