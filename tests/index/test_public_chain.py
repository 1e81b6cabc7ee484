"""The market index against a chain that behaves like a public one.

A fresh anvil per module, reached through ``PublicRpcProxy`` where a test needs what
public RPC providers do (cap ``eth_getLogs`` ranges, answer 429): the index starts at
the deployment block, narrows its log ranges when refused, backs off and recovers
from rate limits, honours its confirmations, and repairs a reorg deeper than them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from eth_utils import keccak

from proxy_router.chain.client import ChainClient
from proxy_router.chain.deploy import Deployment, deploy_all
from proxy_router.chain.errors import ChainUnavailable
from proxy_router.chain.events import REORG, MarketEvent
from proxy_router.chain.index import MarketIndex
from proxy_router.chain.marketplace import Marketplace
from proxy_router.dev.anvil import Anvil, dev_address, dev_key, rpc
from proxy_router.store.db import Store
from tests.chain_client.public_rpc import PublicRpcProxy

PROVIDER = 1


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with Anvil() as chain:
        rpc(chain.rpc_url, "anvil_mine", [hex(40)])  # the contract is not at block 0..40
        yield chain


@pytest.fixture(scope="module")
async def deployment(anvil: Anvil) -> Deployment:
    client = await ChainClient.connect(anvil.rpc_url, dev_key(0))
    try:
        return await deploy_all(client, fund=[dev_address(PROVIDER)])
    finally:
        await client.close()


@pytest.fixture
async def proxy(anvil: Anvil) -> AsyncIterator[PublicRpcProxy]:
    proxy = await PublicRpcProxy(anvil.rpc_url).start()
    try:
        yield proxy
    finally:
        await proxy.stop()


class Harness:
    """An index (and a signing Marketplace for the provider) over one RPC URL."""

    def __init__(self, anvil: Anvil, deployment: Deployment, tmp: Path) -> None:
        self.anvil, self.deployment, self.tmp = anvil, deployment, tmp
        self.closers: list[ChainClient] = []
        self.stores: list[Store] = []

    async def market(self, url: str, key: str | None = None) -> Marketplace:
        client = await ChainClient.connect(url, key)
        self.closers.append(client)
        return Marketplace(client, self.deployment.marketplace_address,
                           self.deployment.mor_token_address)

    async def index(self, url: str, **kwargs: object) -> MarketIndex:
        store = await Store.open(self.tmp / f"index{len(self.stores)}", "index")
        self.stores.append(store)
        return MarketIndex(await self.market(url), store, poll_interval=0.05,
                           **kwargs)  # type: ignore[arg-type]

    async def post_bid(self, price: int = 10**12) -> str:
        market = await self.market(self.anvil.rpc_url, dev_key(PROVIDER))
        if not (await market.get_provider(market.client.address)).registered:
            await market.register_provider(await market.param("providerMinStake"), "p:1")
        model_id, _ = await market.register_model(
            keccak(text=str(price)), b"\0" * 32, await market.param("modelMinStake"),
            f"m{price}", [])
        bid_id, _ = await market.post_bid(model_id, price)
        return bid_id

    async def close(self) -> None:
        for client in self.closers:
            await client.close()
        for store in self.stores:
            await store.close()


@pytest.fixture
async def harness(anvil: Anvil, deployment: Deployment, tmp_path: Path
                  ) -> AsyncIterator[Harness]:
    snapshot = anvil.snapshot()
    h = Harness(anvil, deployment, tmp_path)
    try:
        yield h
    finally:
        await h.close()
        anvil.revert(snapshot)


def head(anvil: Anvil) -> int:
    return int(str(rpc(anvil.rpc_url, "eth_blockNumber")), 16)


async def test_the_index_starts_at_the_deployment_block_never_block_0(
        harness: Harness, proxy: PublicRpcProxy, deployment: Deployment):
    bid_id = await harness.post_bid()
    index = await harness.index(proxy.url)  # no start block given: it is found on chain
    await index.poll_once()
    # The Marketplace is created one block after the MOR token (the deployment's block).
    marketplace_block = deployment.block_number + 1
    assert rpc(proxy.upstream, "eth_getCode", [deployment.marketplace_address,
                                               hex(marketplace_block - 1)]) == "0x"
    assert index.start_block == marketplace_block > 40
    assert bid_id in index.bids
    first = proxy.first_log_query
    assert first is not None and first[0] == marketplace_block


async def test_log_ranges_narrow_to_what_the_node_accepts(harness: Harness,
                                                          proxy: PublicRpcProxy,
                                                          deployment: Deployment, anvil: Anvil):
    bid_id = await harness.post_bid()
    rpc(anvil.rpc_url, "anvil_mine", [hex(30)])
    proxy.max_log_range = 4
    index = await harness.index(proxy.url, start_block=deployment.block_number)
    await index.poll_once()
    assert index.checkpoint == head(anvil) and bid_id in index.bids
    assert proxy.refused["range"] >= 1 and index.log_range <= 4
    accepted = [span for span in proxy.log_spans if span <= 4]
    assert sum(accepted) == head(anvil) - deployment.block_number + 1  # every block, once


@pytest.mark.parametrize("refusal", ["http-429", "rpc-rate-limit"])
async def test_rate_limits_back_off_and_the_index_recovers(
        harness: Harness, proxy: PublicRpcProxy, deployment: Deployment, refusal: str):
    index = await harness.index(proxy.url, start_block=deployment.block_number)
    await index.poll_once()
    if refusal == "http-429":
        proxy.fail_next = 100
    else:
        proxy.rpc_rate_limited_next = 100
    with pytest.raises(ChainUnavailable):
        await index.poll_once()
    await index.start()  # the loop keeps polling (with backoff) instead of crashing
    try:
        bid_id = await harness.post_bid()
        async with asyncio.timeout(30):
            while index.last_error is None:  # noqa: ASYNC110 -- polling the index from outside
                await asyncio.sleep(0.05)
        assert bid_id not in index.bids
        assert "429" in str(index.last_error) or "rate limit" in str(index.last_error)
        proxy.fail_next = proxy.rpc_rate_limited_next = 0  # the node recovers
        async with asyncio.timeout(30):
            while bid_id not in index.bids:  # noqa: ASYNC110 -- polling the index from outside
                await asyncio.sleep(0.05)
        assert index.last_error is None
    finally:
        await index.stop()


async def test_events_are_folded_only_once_confirmed(harness: Harness, anvil: Anvil,
                                                     deployment: Deployment):
    index = await harness.index(anvil.rpc_url, start_block=deployment.block_number,
                                confirmations=3)
    bid_id = await harness.post_bid()
    await index.poll_once()
    assert bid_id not in index.bids and index.checkpoint == head(anvil) - 3
    rpc(anvil.rpc_url, "anvil_mine", [hex(3)])
    await index.poll_once()
    assert bid_id in index.bids


@pytest.mark.parametrize("how", ["rollback", "reorg"])
async def test_a_reorg_deeper_than_the_confirmations_leaves_no_ghost(
        harness: Harness, anvil: Anvil, deployment: Deployment, how: str):
    kept = await harness.post_bid(price=10**12)
    before = head(anvil)
    index = await harness.index(anvil.rpc_url, start_block=deployment.block_number)
    heard: list[MarketEvent] = []
    index.subscribe(heard.append)
    await index.poll_once()  # folded to `before`: remembered as a checkpoint
    orphan = await harness.post_bid(price=3 * 10**12)  # 3 transactions after `before`
    await index.poll_once()
    assert {kept, orphan} <= {b.id for b in index.active_bids()}
    depth = head(anvil) - before
    if how == "rollback":
        rpc(anvil.rpc_url, "anvil_rollback", [depth])
        rpc(anvil.rpc_url, "anvil_mine", [hex(depth + 1)])  # a longer, different chain
    else:
        rpc(anvil.rpc_url, "anvil_reorg", [depth, []])  # same height, other blocks
    await index.poll_once()
    assert index.reorgs == 1
    forks = [e.block for e in heard if e.name == REORG]  # listeners are told, to re-read
    assert forks == [before]  # the newest remembered block still on the chain
    assert orphan not in index.bids and kept in index.bids
    assert {b.id for b in index.active_bids()} == {kept}
    # What the store holds agrees: a restarted index does not bring the ghost back.
    again = await harness.index(anvil.rpc_url, start_block=deployment.block_number)
    again.store = index.store
    await again.load()
    assert orphan not in again.bids and kept in again.bids


async def test_a_view_costs_the_node_one_request(harness: Harness, proxy: PublicRpcProxy):
    market = await harness.market(proxy.url)
    proxy.calls.clear()
    for _ in range(3):
        await market.param("bidFee")
    assert dict(proxy.calls) == {"eth_call": 3}  # the chain id is asked once, at connect


async def test_a_restarted_index_still_finds_the_fork_where_it_is(
        harness: Harness, anvil: Anvil, deployment: Deployment):
    await harness.post_bid(price=10**12)
    before = head(anvil)
    index = await harness.index(anvil.rpc_url, start_block=deployment.block_number)
    await index.poll_once()
    orphan = await harness.post_bid(price=5 * 10**12)
    await index.poll_once()
    restarted = MarketIndex(index.market, index.store, start_block=deployment.block_number)
    await restarted.load()  # the remembered checkpoints come back from the store
    heard: list[MarketEvent] = []
    restarted.subscribe(heard.append)
    rpc(anvil.rpc_url, "anvil_reorg", [head(anvil) - before, []])
    await restarted.poll_once()
    assert [e.block for e in heard if e.name == REORG] == [before]
    assert orphan not in restarted.bids


async def test_a_local_chain_without_history_is_folded_from_block_0(
        harness: Harness, proxy: PublicRpcProxy, anvil: Anvil):
    bid_id = await harness.post_bid()
    proxy.no_state_before = head(anvil)  # the start block cannot be searched for
    index = await harness.index(proxy.url)
    await index.poll_once()
    assert proxy.refused["history"] >= 1
    assert index.start_block == 0 and bid_id in index.bids  # anvil's chain: short, so fine
