"""The market index: folded from events, persisted, resumed from its checkpoint."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from eth_utils import keccak

from proxy_router.chain.client import ChainClient
from proxy_router.chain.index import MarketIndex
from proxy_router.chain.marketplace import Marketplace
from proxy_router.store.db import Store
from tests.conftest import PROVIDER, Chain


async def onboard(chain: Chain, price: int = 10**12) -> tuple[str, str]:
    market = await chain.market(PROVIDER)
    await market.register_provider(await market.param("providerMinStake"), "127.0.0.1:3333")
    model_id, _ = await market.register_model(keccak(text="m"), b"\0" * 32,
                                              await market.param("modelMinStake"), "m", ["llm"])
    bid_id, _ = await market.post_bid(model_id, price)
    return model_id, bid_id


async def new_index(chain: Chain, path: Path, url: str | None = None,
                    interval: float = 0.5) -> tuple[MarketIndex, ChainClient, Store]:
    client = await ChainClient.connect(url or chain.anvil.rpc_url)
    store = await Store.open(path, "index")
    dep = chain.deployment
    market = Marketplace(client, dep.marketplace_address, dep.mor_token_address)
    index = MarketIndex(market, store,
                        poll_interval=interval, start_block=chain.deployment.block_number)
    return index, client, store


async def test_providers_models_and_bids_are_folded_from_events(chain: Chain, tmp_path: Path):
    model_id, bid_id = await onboard(chain)
    index, client, store = await new_index(chain, tmp_path)
    try:
        await index.poll_once()
        bid = index.bids[bid_id]
        assert bid.model_id == model_id and bid.price_per_second == 10**12 and bid.active
        assert (found := index.find_model("m")) is not None and found.id == model_id
        assert (same := index.find_model(model_id.upper().replace("0X", "0x"))) is not None
        assert same.name == "m" and same.tags == ("llm",)
        assert [b.id for b in index.active_bids(model_id)] == [bid_id]
        provider = next(iter(index.providers.values()))
        assert provider.endpoint == "127.0.0.1:3333" and provider.registered
        assert index.provider(provider.id.lower()) == provider
    finally:
        await client.close()
        await store.close()


async def test_a_replaced_bid_leaves_only_the_new_one_active(chain: Chain, tmp_path: Path):
    model_id, old_bid = await onboard(chain)
    market = await chain.market(PROVIDER)
    new_bid, _ = await market.post_bid(model_id, 2 * 10**12)
    index, client, store = await new_index(chain, tmp_path)
    try:
        await index.poll_once()
        assert [b.id for b in index.active_bids(model_id)] == [new_bid]
        assert index.bids[old_bid].deleted_at > 0 and not index.bids[old_bid].active
    finally:
        await client.close()
        await store.close()


@pytest.mark.parametrize(("scheme", "interval", "limit"), [
    ("http", 2.0, 3.0),  # polling: within one interval (+1 s for a loaded CI box)
    ("ws", 30.0, 5.0),  # ws:// subscription: new heads wake the poller long before 30 s
])
async def test_a_new_bid_shows_within_one_polling_interval(chain: Chain, tmp_path: Path,
                                                           scheme: str, interval: float,
                                                           limit: float):
    model_id, _ = await onboard(chain)
    url = chain.anvil.rpc_url.replace("http", scheme, 1)
    index, client, store = await new_index(chain, tmp_path, url, interval=interval)
    await index.start()
    try:
        market = await chain.market(PROVIDER)
        posted = time.monotonic()
        new_bid, _ = await market.post_bid(model_id, 3 * 10**12)
        while new_bid not in index.bids:
            assert time.monotonic() - posted < limit, "bid not indexed in time"
            await asyncio.sleep(0.02)
    finally:
        await index.stop()
        await client.close()
        await store.close()


async def test_a_restart_resumes_from_the_persisted_checkpoint(chain: Chain, tmp_path: Path):
    model_id, bid_id = await onboard(chain)
    index, client, store = await new_index(chain, tmp_path)
    await index.poll_once()
    checkpoint = index.checkpoint
    await client.close()
    await store.close()

    market = await chain.market(PROVIDER)
    later_bid, _ = await market.post_bid(model_id, 5 * 10**12)
    again, client, store = await new_index(chain, tmp_path)
    try:
        await again.load()
        assert again.checkpoint == checkpoint and bid_id in again.bids
        assert later_bid not in again.bids
        await again.poll_once()
        assert later_bid in again.bids and again.bids[bid_id].deleted_at > 0
        assert again.bids[bid_id] == index.bids[bid_id].__class__.from_json(
            again.bids[bid_id].to_json())  # what the store holds reads back the same
    finally:
        await client.close()
        await store.close()
