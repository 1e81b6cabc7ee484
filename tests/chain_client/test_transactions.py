"""The chain client's transaction machinery: fallback URLs, outages, stuck
transactions replaced with higher fees, nonce recovery, decoded reverts."""

from __future__ import annotations

import asyncio

import pytest

from proxy_router.chain.client import ChainClient, FeePolicy
from proxy_router.chain.errors import ChainUnavailable, ContractReverted, TransactionFailed
from proxy_router.dev.anvil import dev_address, dev_key, rpc
from tests.chain.helpers import ONE_HOUR_STAKE, addr, latest_timestamp, onboard, sign_approval
from tests.conftest import OTHER, PROVIDER, USER, Chain

DEAD = "http://127.0.0.1:9"


async def test_a_dead_first_rpc_url_falls_back_to_the_next(chain: Chain):
    client = await ChainClient.connect(f"{DEAD},{chain.anvil.rpc_url}", dev_key(USER))
    try:
        token = client.contract("MorToken", chain.deployment.mor_token_address)
        before = await client.call(token, "balanceOf", dev_address(OTHER))
        await client.transact(token, "transfer", dev_address(OTHER), 5)
        assert await client.call(token, "balanceOf", dev_address(OTHER)) == before + 5
    finally:
        await client.close()


async def test_no_reachable_url_is_chain_unavailable_not_a_crash():
    with pytest.raises(ChainUnavailable, match="no RPC endpoint answered"):
        await ChainClient.connect(f"{DEAD},http://127.0.0.1:10")


async def test_a_revert_is_decoded_before_anything_is_signed(chain: Chain):
    market = await chain.market(USER)
    with pytest.raises(ContractReverted) as err:
        await market.client.transact(market.contract, "providerRegister", 1, "x:1")
    assert err.value.error_name == "StakeTooLow"
    assert err.value.error_args == {"required": 2 * 10**17, "given": 1}


async def test_a_stuck_transaction_is_replaced_with_higher_fees(chain: Chain):
    fees = FeePolicy(receipt_timeout_s=1.0, bump_percent=25, max_attempts=4)
    client = await ChainClient.connect(chain.anvil.rpc_url, dev_key(USER), fees=fees)
    token = client.contract("MorToken", chain.deployment.mor_token_address)
    rpc(chain.anvil.rpc_url, "evm_setAutomine", [False])
    try:
        send = asyncio.create_task(client.transact(token, "transfer", dev_address(OTHER), 7))
        await asyncio.sleep(0.3)
        first = rpc(chain.anvil.rpc_url, "txpool_content")["pending"]
        (first_tx,) = next(iter(first.values())).values()
        await asyncio.sleep(2.0)  # > receipt timeout: the client re-broadcasts, bumped
        rpc(chain.anvil.rpc_url, "evm_mine")
        result = await asyncio.wait_for(send, 20)
    finally:
        rpc(chain.anvil.rpc_url, "evm_setAutomine", [True])
        await client.close()
    mined = rpc(chain.anvil.rpc_url, "eth_getTransactionByHash", [result.tx_hash])
    assert result.tx_hash != first_tx["hash"]
    assert mined["nonce"] == first_tx["nonce"]
    assert int(mined["maxFeePerGas"], 16) >= int(first_tx["maxFeePerGas"], 16) * 125 // 100


async def test_a_nonce_used_elsewhere_is_recovered(chain: Chain):
    mine = await ChainClient.connect(chain.anvil.rpc_url, dev_key(USER))
    other = await ChainClient.connect(chain.anvil.rpc_url, dev_key(USER))
    try:
        token = mine.contract("MorToken", chain.deployment.mor_token_address)
        await mine.transact(token, "transfer", dev_address(OTHER), 1)  # caches nonce n+1
        await other.transact(other.contract("MorToken", chain.deployment.mor_token_address),
                             "transfer", dev_address(OTHER), 1)  # uses n+1 behind our back
        result = await mine.transact(token, "transfer", dev_address(OTHER), 1)
        assert result.status == 1
    finally:
        await mine.close()
        await other.close()


async def test_gas_is_estimated_for_the_next_block_not_the_last_one(chain: Chain):
    """On an idle chain the latest block is old, but a transaction goes into the next one:
    an approval dated at that next block's time must pass estimation as it passes on chain."""
    provider, user = await chain.market(PROVIDER), await chain.market(USER)
    offer = await onboard(provider)
    await user.ensure_allowance(ONE_HOUR_STAKE)  # so that openSession is the next block
    rpc(chain.anvil.rpc_url, "evm_increaseTime", [120])  # two idle minutes, nothing mined
    now = await latest_timestamp(provider) + 120
    approval, signature = await sign_approval(provider, offer.bid_id, addr(user), timestamp=now)
    session_id, _ = await user.open_session(ONE_HOUR_STAKE, approval, signature)
    assert (await user.get_session(session_id)).opened_at >= now


async def test_eth_is_sent_with_the_same_receipt_handling_and_refusals_read_plainly(
        chain: Chain):
    client = await ChainClient.connect(chain.anvil.rpc_url, dev_key(USER))
    try:
        before = await client.w3.eth.get_balance(dev_address(OTHER))
        result = await client.send_value(dev_address(OTHER), 12345)
        assert result.status == 1 and result.gas_used == 21_000
        assert await client.w3.eth.get_balance(dev_address(OTHER)) == before + 12345
        with pytest.raises(TransactionFailed) as info:
            await client.send_value(dev_address(OTHER), 10**30)
        assert str(info.value) == ("node rejected the transaction: "
                                   "Insufficient funds for gas * price + value")
    finally:
        await client.close()
