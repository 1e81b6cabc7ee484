"""Paginated views: every page is a window of the full list; past-the-end pages are empty."""

from __future__ import annotations

from typing import Any

from proxy_router.chain.marketplace import Marketplace

from .helpers import (
    MODEL_STAKE,
    PROVIDER_STAKE,
    ChainHandle,
    Offer,
    as_view,
    hex32,
    onboard,
    open_session,
    random_base_model_id,
    register_model,
)


def _norm(value: Any) -> str:
    return hex32(value) if isinstance(value, bytes) else str(value)


async def page(market: Marketplace, fn: str, *args: Any, offset: int = 0,
               limit: int = 1000) -> tuple[list[str], int]:
    items, total = await market.client.call(market.contract, fn, *args, offset, limit)
    return [_norm(i) for i in items], int(total)


async def assert_pages(market: Marketplace, fn: str, *args: Any) -> list[str]:
    """Walk ``fn`` two at a time and check the windows against the full list."""
    everything, total = await page(market, fn, *args)
    assert len(everything) == total
    walked: list[str] = []
    for offset in range(0, total, 2):
        chunk, chunk_total = await page(market, fn, *args, offset=offset, limit=2)
        assert chunk_total == total
        assert chunk == everything[offset:offset + 2]
        walked += chunk
    assert walked == everything
    assert len(set(everything)) == len(everything)
    for offset, limit in ((total, 5), (total + 10, 5), (0, 0), (2**256 - 1, 2**256 - 1)):
        assert await page(market, fn, *args, offset=offset, limit=limit) == ([], total)
    assert await page(market, fn, *args, offset=1, limit=2**256 - 1) == (everything[1:], total)
    return everything


async def test_active_bids_by_model_page_through_every_providers_bid(chain: ChainHandle) -> None:
    providers = [await chain.market(i) for i in (1, 3, 4, 5, 6)]
    first = await onboard(providers[0])
    offers = [first] + [await onboard(p, model_id=first.model_id) for p in providers[1:]]

    listed = await assert_pages(providers[0], "getActiveBidsByModel",
                                bytes.fromhex(first.model_id[2:]))

    assert sorted(listed) == sorted(o.bid_id for o in offers)
    await providers[2].client.transact(providers[2].contract, "deleteModelBid",
                                       bytes.fromhex(offers[2].bid_id[2:]))
    after, total = await page(providers[0], "getActiveBidsByModel",
                              bytes.fromhex(first.model_id[2:]))
    assert total == 4
    assert sorted(after) == sorted(o.bid_id for i, o in enumerate(offers) if i != 2)


async def test_active_bids_by_provider_page_through_its_bids_on_every_model(
    provider: Marketplace,
) -> None:
    _, before = await page(provider, "getActiveBidsByProvider", provider.client.address)
    offers = [await onboard(provider) for _ in range(5)]

    listed = await assert_pages(provider, "getActiveBidsByProvider", provider.client.address)

    assert len(listed) == before + 5
    assert {o.bid_id for o in offers} <= set(listed)


async def test_sessions_by_user_and_by_provider_page_in_opening_order(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    before_user, _ = await page(user, "getSessionsByUser", user.client.address)
    before_provider, _ = await page(user, "getSessionsByProvider", offer.provider)
    opened = [(await open_session(user, provider, offer.bid_id))[0] for _ in range(5)]

    by_user = await assert_pages(user, "getSessionsByUser", user.client.address)
    by_provider = await assert_pages(user, "getSessionsByProvider", offer.provider)

    assert by_user == before_user + opened
    assert by_provider == before_provider + opened


async def test_model_ids_list_registered_models_until_they_are_deregistered(
    provider: Marketplace,
) -> None:
    _, before = await page(provider, "getModelIds")
    models = [(await register_model(provider, stake=MODEL_STAKE))[0] for _ in range(3)]

    listed = await assert_pages(provider, "getModelIds")
    assert len(listed) == before + 3
    assert set(models) <= set(listed)

    await provider.client.transact(provider.contract, "modelDeregister",
                                   bytes.fromhex(models[1][2:]))
    listed, total = await page(provider, "getModelIds")
    assert total == before + 2
    assert models[1] not in listed


async def test_providers_list_active_providers_until_they_deregister(chain: ChainHandle) -> None:
    markets = [await chain.market(i) for i in (4, 5, 6)]
    _, before = await page(markets[0], "getProviders")
    for m in markets:
        await m.register_provider(PROVIDER_STAKE, "p:1")

    listed = await assert_pages(markets[0], "getProviders")
    assert len(listed) == before + 3
    assert {m.client.address for m in markets} <= set(listed)

    await markets[0].deregister_provider()
    listed, total = await page(markets[0], "getProviders")
    assert total == before + 2
    assert markets[0].client.address not in listed


async def test_unknown_ids_read_as_zeroed_structs(provider: Marketplace) -> None:
    unknown = random_base_model_id()
    assert (await provider.get_model(unknown)).created_at == 0
    assert (await provider.get_bid(unknown)).created_at == 0
    assert as_view(await provider.get_session(unknown)) == {
        "user": "0x0000000000000000000000000000000000000000",
        "provider": "0x0000000000000000000000000000000000000000",
        "bidId": "0x" + "00" * 32, "modelId": "0x" + "00" * 32, "stake": 0,
        "pricePerSecond": 0, "openedAt": 0, "endsAt": 0, "closedAt": 0, "providerEarned": 0,
        "userRefund": 0, "held": 0, "releaseAt": 0, "disputed": False, "closed": False,
        "claimed": False,
    }
    active = await provider.client.call(provider.contract, "getActiveBidId",
                                        provider.client.address, unknown)
    assert active == b"\x00" * 32
