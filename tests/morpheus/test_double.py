"""The Morpheus-Lumerin test double behaves as the reference diamond does, on a real anvil.

Each test drives ``MorpheusDiamondDouble`` (deployed by ``deploy_morpheus_double`` with the
reference's base-mainnet values) through ``ChainClient`` and runs inside an ``evm_snapshot``
that is reverted afterwards. Every MOR movement is checked to the wei against the formulas the
reference applies; ../shared/morpheus-ref/README.md ("Reference behaviour established here")
is the specification, and the last test runs the reference's own smoke check against the double.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_abi import encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3.contract import AsyncContract

from proxy_router.chain.artifacts import load_artifact
from proxy_router.chain.client import ChainClient, TxResult
from proxy_router.chain.encoding import sign_blob
from proxy_router.chain.errors import ContractReverted
from proxy_router.dev.anvil import ANVIL_MNEMONIC, Anvil, dev_address, dev_key, rpc
from proxy_router.dev.morpheus_double import (
    BASE_MAINNET,
    DOUBLE_ARTIFACT,
    MorpheusDoubleDeployment,
    deploy_morpheus_double,
)

DEPLOYER, PROVIDER, USER, OTHER = 0, 1, 2, 3
MOR = 10**18
DAY = 86_400
HOUR = 3600
PRICE = 10**15  # wei/s, the smoke's price: 3.6 MOR an hour
PROVIDER_STAKE = 100 * MOR
ENDPOINT = "127.0.0.1:3333"
SMOKE = Path(os.environ.get("MORPHEUS_SMOKE",
                            Path(__file__).resolve().parents[3] / "shared" / "morpheus-ref"
                            / "smoke.py"))


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    """A chain of this module's own: the deployment and its clock stay out of other tests'."""
    with Anvil() as chain:
        yield chain


@pytest.fixture(scope="module")
async def double(anvil: Anvil) -> MorpheusDoubleDeployment:
    client = await ChainClient.connect(anvil.rpc_url, dev_key(DEPLOYER))
    try:
        return await deploy_morpheus_double(client, fund=[dev_address(i) for i in range(1, 10)])
    finally:
        await client.close()


@dataclass
class Role:
    """The double as one anvil dev account sees it."""

    client: ChainClient
    diamond: AsyncContract
    mor: AsyncContract

    @property
    def address(self) -> str:
        return self.client.address

    @property
    def account(self) -> LocalAccount:
        assert self.client.account is not None
        return self.client.account

    async def call(self, fn: str, *args: Any, block: int | str = "latest") -> Any:
        return await self.client.call(self.diamond, fn, *args, block=block)

    async def send(self, fn: str, *args: Any) -> TxResult:
        return await self.client.transact(self.diamond, fn, *args)

    async def approve(self, amount: int) -> None:
        await self.client.transact(self.mor, "approve", self.diamond.address, amount)


@dataclass
class Net:
    anvil: Anvil
    deployment: MorpheusDoubleDeployment
    owner: Role
    provider: Role
    user: Role
    other: Role

    async def now(self) -> int:
        return (await self.user.client.head())[1]

    async def balances(self) -> dict[str, int]:
        who = {"user": self.user.address, "provider": self.provider.address,
               "diamond": self.deployment.diamond, "funding": self.deployment.funding_account}
        return {k: await self.user.client.call(self.user.mor, "balanceOf", a)
                for k, a in who.items()}

    def travel(self, seconds: int) -> None:
        self.anvil.increase_time(seconds)

    async def travel_to_time_of_day(self, seconds: int) -> None:
        """To the next UTC day at ``seconds`` past midnight, so what follows falls on one day."""
        now = await self.now()
        self.travel(now - now % DAY + DAY + seconds - now)


@pytest.fixture
async def net(anvil: Anvil, double: MorpheusDoubleDeployment) -> AsyncIterator[Net]:
    snapshot = anvil.snapshot()
    clients: list[ChainClient] = []

    async def role(index: int) -> Role:
        client = await ChainClient.connect(anvil.rpc_url, dev_key(index))
        clients.append(client)
        return Role(client, client.contract(DOUBLE_ARTIFACT, double.diamond),
                    client.contract("MorToken", double.mor))

    try:
        yield Net(anvil, double, await role(DEPLOYER), await role(PROVIDER), await role(USER),
                  await role(OTHER))
    finally:
        for client in clients:
            await client.close()
        anvil.revert(snapshot)


# ---------------------------------------------------------------------- helpers


@contextmanager
def reverts(error_name: str, **expected: Any) -> Iterator[None]:
    with pytest.raises(ContractReverted) as info:
        yield
    assert info.value.error_name == error_name, info.value.reason
    for key, want in expected.items():
        got = info.value.error_args[key]
        assert (got.lower() == want.lower()) if isinstance(want, str) else got == want, key


def approval(bid_id: bytes, chain_id: int, user: str, ts: int) -> bytes:
    return encode(["bytes32", "uint256", "address", "uint128"], [bid_id, chain_id, user, ts])


def receipt(session_id: bytes, chain_id: int, ts: int, tps: int = 25_000, ttft: int = 350, *,
            fields: int = 7) -> bytes:
    """The proxy-router's 7-field report, or the 5 fields the contract decodes."""
    if fields == 5:
        return encode(["bytes32", "uint256", "uint128", "uint32", "uint32"],
                      [session_id, chain_id, ts, tps, ttft])
    return encode(["bytes32", "uint256", "uint128", "uint32", "uint32", "uint32", "uint32"],
                  [session_id, chain_id, ts, tps, ttft, 100, 200])


def model_id_of(owner: str, base: bytes) -> bytes:
    return keccak(bytes.fromhex(owner[2:]) + base)


def bid_id_of(provider: str, model_id: bytes, nonce: int) -> bytes:
    return keccak(bytes.fromhex(provider[2:]) + model_id + nonce.to_bytes(32, "big"))


def session_id_of(user: str, provider: str, bid_id: bytes, nonce: int) -> bytes:
    return keccak(bytes.fromhex(user[2:]) + bytes.fromhex(provider[2:]) + bid_id
                  + nonce.to_bytes(32, "big"))


@dataclass(frozen=True)
class Offer:
    model_id: bytes
    bid_id: bytes


async def onboard(net: Net, *, stake: int = PROVIDER_STAKE, price: int = PRICE) -> Offer:
    """The provider registered with ``stake``, its own model at the minimum stake, and a bid."""
    p = net.provider
    config = net.deployment.config
    await p.approve(stake + config.model_min_stake + config.bid_fee)
    await p.send("providerRegister", p.address, stake, ENDPOINT)
    base = os.urandom(32)
    await p.send("modelRegister", p.address, base, keccak(text="ipfs-cid"), 0,
                 config.model_min_stake, "smoke-llama", ["llm"])
    model_id = model_id_of(p.address, base)
    await p.send("postModelBid", p.address, model_id, price)
    return Offer(model_id, bid_id_of(p.address, model_id, 0))  # its first bid: nonce 0


_MS = itertools.count()


async def signed_approval(net: Net, bid_id: bytes, *, ts: int | None = None,
                          chain_id: int | None = None,
                          signer: LocalAccount | None = None) -> tuple[bytes, bytes]:
    """An approval as the proxy-router signs it: a millisecond stamp unless ``ts`` is given
    (a distinct one each time: two approvals in one second must not be the same blob)."""
    if ts is None:
        ts = await net.now() * 1000 + next(_MS) % 1000
    blob = approval(bid_id, net.user.client.chain_id if chain_id is None else chain_id,
                    net.user.address, ts)
    return blob, sign_blob(signer or net.provider.account, blob)


async def stake_for(net: Net, seconds: int, price: int = PRICE) -> int:
    return int(await net.user.call("stipendToStake", price * seconds, await net.now()))


async def open_session(net: Net, offer: Offer, stake: int, *, direct: bool,
                       ts: int | None = None) -> tuple[bytes, TxResult]:
    blob, sig = await signed_approval(net, offer.bid_id, ts=ts)
    result = await net.user.send("openSession", net.user.address, stake, direct, blob, sig)
    return bytes(result.event("SessionOpened")["sessionId"]), result


async def block_time(net: Net, result: TxResult) -> int:
    block = await net.user.client.w3.eth.get_block(result.block_number)
    return int(block["timestamp"])


async def expected_close(net: Net, session_id: bytes, closed_at: int,
                         before_block: int) -> dict[str, int]:
    """What a close at ``closed_at`` moves, by the reference's formulas, from the session and
    provider as they were before the close (``before_block``)."""
    s = await net.user.call("getSession", session_id, block=before_block)
    provider = await net.user.call("getProvider", net.provider.address, block=before_block)
    reward = (min(closed_at, s.endsAt) - s.openedAt) * PRICE
    refund = s.stake - (reward if s.isDirectPaymentFromUser else 0)
    held = 0
    if closed_at < s.endsAt:
        day_start = closed_at - closed_at % DAY
        used_today = closed_at - max(s.openedAt, day_start)
        held = min(refund, int(await net.user.call("stipendToStake", used_today * PRICE,
                                                   day_start, block=before_block)))
    earned = 0 if closed_at > provider.limitPeriodEnd else provider.limitPeriodEarned
    paid = min(reward - s.providerWithdrawnAmount, provider.stake - earned)
    return {"user": refund - held, "provider": paid,
            "diamond": -(refund - held) - (paid if s.isDirectPaymentFromUser else 0),
            "funding": 0 if s.isDirectPaymentFromUser else -paid, "held": held}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


# ---------------------------------------------------------------------- deployment


async def test_deployment_has_the_reference_base_mainnet_configuration(net: Net) -> None:
    d, u = net.deployment, net.user
    assert await u.call("getToken") == d.mor
    assert await u.call("owner") == net.owner.address
    assert await u.call("getFundingAccount") == d.funding_account
    assert await u.call("getProviderMinimumStake") == MOR // 10
    assert await u.call("getModelMinimumStake") == MOR // 10
    assert await u.call("getBidFee") == MOR // 10
    assert list(await u.call("getMinMaxBidPricePerSecond")) == [10**13, 10**16]
    assert await u.call("getMaxSessionDuration") == 7 * DAY
    assert await u.client.call(u.mor, "allowance", d.funding_account, d.diamond) == 2**256 - 1
    assert await u.client.call(u.mor, "balanceOf", d.funding_account) == 1_000_000 * MOR
    assert d.deploy_block <= d.diamond_block
    # The delegation side is there but empty: no registry, nothing delegated.
    assert await u.call("getRegistry") == "0x" + "00" * 20
    rules = await u.call("DELEGATION_RULES_SESSION")
    assert rules == keccak(text="delegation.rules.session")
    assert await u.call("isRightsDelegated", net.other.address, u.address, rules) is False


async def test_emission_formulas_give_the_references_stake_to_cost_ratio(net: Net) -> None:
    u, now = net.user, await net.now()
    supply, compute = BASE_MAINNET.mor_supply, BASE_MAINNET.compute_emission
    assert await u.call("totalMORSupply", now) == supply
    assert await u.call("getComputeBalance", now) == compute
    assert await u.call("getTodaysBudget", now) == compute // 100
    assert await u.call("startOfTheDay", now) == now - now % DAY
    cost = PRICE * HOUR
    stake = await u.call("stipendToStake", cost, now)
    assert stake == cost * supply * 100 // compute == 1140 * MOR  # ratio 316.67
    assert await u.call("stakeToStipend", stake, now) == stake * compute // (supply * 100)
    # The session length comes from the stake, capped at the maximum duration.
    assert await u.call("getSessionEnd", stake, PRICE, now) == now + HOUR
    assert await u.call("getSessionEnd", 10**9 * MOR, PRICE, now) == now + 7 * DAY


# ---------------------------------------------------------------------- registration


async def test_provider_model_and_bid_registration(net: Net) -> None:
    p, d = net.provider, net.deployment
    before = await net.balances()
    fee0 = await p.call("getFeeBalance")
    await p.approve(PROVIDER_STAKE + 2 * d.config.model_min_stake + 2 * d.config.bid_fee)

    registered = await p.send("providerRegister", p.address, PROVIDER_STAKE, ENDPOINT)
    assert registered.event("ProviderRegistered") == {"provider": p.address}
    info = await p.call("getProvider", p.address)
    assert (info.endpoint, info.stake, info.isDeleted) == (ENDPOINT, PROVIDER_STAKE, False)
    assert info.limitPeriodEnd == info.createdAt + 365 * DAY and info.limitPeriodEarned == 0
    assert await p.call("getIsProviderActive", p.address)
    assert p.address in (await p.call("getActiveProviders", 0, 100))[0]

    base = keccak(text="morpheus-double/llama-3.2-1b")
    model = await p.send("modelRegister", p.address, base, keccak(text="cid"), 0,
                         d.config.model_min_stake, "llama", ["llm", "chat"])
    model_id = model_id_of(p.address, base)
    assert model.event("ModelRegisteredUpdated") == {"owner": p.address, "modelId": model_id}
    assert await p.call("getModelId", p.address, base) == model_id
    m = await p.call("getModel", model_id)
    assert (m.owner, m.name, list(m.tags), m.stake, m.isDeleted) == (
        p.address, "llama", ["llm", "chat"], d.config.model_min_stake, False)
    assert model_id in (await p.call("getActiveModelIds", 0, 100))[0]

    posted = await p.send("postModelBid", p.address, model_id, PRICE)
    assert posted.event("MarketplaceBidPosted") == {"provider": p.address, "modelId": model_id,
                                                    "nonce": 0}
    bid_id = bid_id_of(p.address, model_id, 0)
    assert await p.call("getBidId", p.address, model_id, 0) == bid_id
    assert await p.call("getProviderModelId", p.address, model_id) == keccak(
        bytes.fromhex(p.address[2:]) + model_id)
    bid = await p.call("getBid", bid_id)
    assert (bid.provider, bid.modelId, bid.pricePerSecond, bid.nonce, bid.deletedAt) == (
        p.address, model_id, PRICE, 0, 0)
    assert await p.call("isBidActive", bid_id)
    assert await p.call("getFeeBalance") == fee0 + d.config.bid_fee

    # A new bid on the same model replaces the previous one.
    replaced = await p.send("postModelBid", p.address, model_id, 2 * PRICE)
    assert replaced.event("MarketplaceBidDeleted") == {"provider": p.address,
                                                       "modelId": model_id, "nonce": 0}
    new_bid = bid_id_of(p.address, model_id, 1)
    assert list((await p.call("getModelActiveBids", model_id, 0, 100))[0]) == [new_bid]
    assert list((await p.call("getProviderActiveBids", p.address, 0, 100))[0]) == [new_bid]
    assert list((await p.call("getModelBids", model_id, 0, 100))[0]) == [bid_id, new_bid]
    assert list(await p.call("getProviderBids", p.address, 1, 100)) == [[new_bid], 2]
    assert not await p.call("isBidActive", bid_id)

    moved = delta(await net.balances(), before)
    spent = PROVIDER_STAKE + d.config.model_min_stake + 2 * d.config.bid_fee
    assert moved == {"user": 0, "provider": -spent, "diamond": spent, "funding": 0}


async def test_registration_reverts_as_the_reference(net: Net) -> None:
    p, config = net.provider, net.deployment.config
    await p.approve(10 * MOR)
    with reverts("ProviderStakeTooLow", amount=1, minAmount=config.provider_min_stake):
        await p.send("providerRegister", p.address, 1, ENDPOINT)
    with reverts("ProviderNotFound"):
        await p.send("providerDeregister", p.address)
    base = os.urandom(32)
    model_id = model_id_of(p.address, base)
    with reverts("ModelStakeTooLow", amount=0, minAmount=config.model_min_stake):
        await p.send("modelRegister", p.address, base, b"\0" * 32, 0, 0, "m", [])
    with reverts("MarketplaceProviderNotFound"):
        await p.send("postModelBid", p.address, model_id, PRICE)
    await p.send("providerRegister", p.address, MOR, ENDPOINT)
    with reverts("MarketplaceModelNotFound"):
        await p.send("postModelBid", p.address, model_id, PRICE)
    await p.send("modelRegister", p.address, base, b"\0" * 32, 0, config.model_min_stake, "m", [])
    for price in (10**13 - 1, 10**16 + 1):
        with reverts("MarketplaceBidPricePerSecondInvalid"):
            await p.send("postModelBid", p.address, model_id, price)
    await p.send("postModelBid", p.address, model_id, PRICE)
    bid_id = bid_id_of(p.address, model_id, 0)
    with reverts("ProviderHasActiveBids"):
        await p.send("providerDeregister", p.address)
    with reverts("ModelHasActiveBids"):
        await p.send("modelDeregister", model_id)

    deleted = await p.send("deleteModelBid", bid_id)
    assert deleted.event("MarketplaceBidDeleted")["nonce"] == 0
    with reverts("MarketplaceActiveBidNotFound"):
        await p.send("deleteModelBid", bid_id)
    before = await p.client.call(p.mor, "balanceOf", p.address)
    assert (await p.send("modelDeregister", model_id)).event("ModelDeregistered") == {
        "owner": p.address, "modelId": model_id}
    assert (await p.send("providerDeregister", p.address)).event("ProviderDeregistered") == {
        "provider": p.address}
    # Both stakes come back (nothing was earned this period).
    after = await p.client.call(p.mor, "balanceOf", p.address)
    assert after - before == MOR + config.model_min_stake
    with reverts("ProviderHasAlreadyDeregistered"):
        await p.send("providerDeregister", p.address)
    with reverts("ModelHasAlreadyDeregistered"):
        await p.send("modelDeregister", model_id)
    assert not await p.call("getIsProviderActive", p.address)
    assert not await p.call("getIsModelActive", model_id)


async def test_only_the_principal_may_act(net: Net) -> None:
    """No delegation in the double: any other caller reverts as an undelegated one does there."""
    p, u, o = net.provider, net.user, net.other
    offer = await onboard(net)
    await o.approve(10_000 * MOR)
    for fn, args, principal in (
        ("providerRegister", (p.address, MOR, ENDPOINT), p.address),
        ("providerDeregister", (p.address,), p.address),
        ("modelRegister", (p.address, b"\1" * 32, b"\0" * 32, 0, MOR, "m", []), p.address),
        ("modelDeregister", (offer.model_id,), p.address),
        ("postModelBid", (p.address, offer.model_id, PRICE), p.address),
        ("deleteModelBid", (offer.bid_id,), p.address),
        ("withdrawUserStakes", (u.address, 255), u.address),
        ("providerSetMinStake", (0,), None),
    ):
        if principal is None:
            with reverts("OwnableUnauthorizedAccount", account=o.address):
                await o.send(fn, *args)
            continue
        with reverts("InsufficientRightsForOperation", delegator=principal, delegatee=o.address):
            await o.send(fn, *args)
    blob, sig = await signed_approval(net, offer.bid_id)
    with reverts("InsufficientRightsForOperation", delegator=u.address, delegatee=o.address):
        await o.send("openSession", u.address, MOR, True, blob, sig)


# ---------------------------------------------------------------------- approvals and opening


async def test_approval_checks_as_the_reference(net: Net) -> None:
    u = net.user
    offer = await onboard(net)
    stake = await stake_for(net, HOUR)
    await u.approve(10 * stake)
    now, chain_id = await net.now(), u.client.chain_id

    # The stamp is read as seconds: 601 s old expires, a millisecond stamp never does.
    old, sig = await signed_approval(net, offer.bid_id, ts=now - 601)
    with reverts("SessionApproveExpired"):
        await u.send("openSession", u.address, stake, True, old, sig)
    other_chain, sig = await signed_approval(net, offer.bid_id, chain_id=chain_id + 1)
    with reverts("SessionApprovedForAnotherChainId"):
        await u.send("openSession", u.address, stake, True, other_chain, sig)
    blob, _ = await signed_approval(net, offer.bid_id)
    with reverts("SessionProviderSignatureMismatch"):
        await u.send("openSession", u.address, stake, True, blob,
                     sign_blob(net.other.account, blob))
    unknown, sig = await signed_approval(net, b"\7" * 32)
    with reverts("SessionBidNotFound"):
        await u.send("openSession", u.address, stake, True, unknown, sig)
    # The proxy-router's direct-payment amount, price * duration, buys ~11 s here.
    blob, sig = await signed_approval(net, offer.bid_id)
    with reverts("SessionTooShort"):
        await u.send("openSession", u.address, PRICE * HOUR, True, blob, sig)

    day_old_ms, sig = await signed_approval(net, offer.bid_id, ts=(now - DAY) * 1000)
    opened = await u.send("openSession", u.address, stake, True, day_old_ms, sig)
    assert await u.call("getIsProviderApprovalUsed", day_old_ms)
    with reverts("SessionDuplicateApproval"):
        await u.send("openSession", u.address, stake, True, day_old_ms, sig)
    # The user an approval names is not checked.
    for_other = approval(offer.bid_id, chain_id, net.other.address, now * 1000 + 1)
    await u.send("openSession", u.address, stake, False, for_other,
                 sign_blob(net.provider.account, for_other))
    assert opened.event("SessionOpened")["providerId"] == net.provider.address


async def test_open_escrows_the_stake_in_both_modes_with_length_from_the_stake(net: Net) -> None:
    u, p = net.user, net.provider
    offer = await onboard(net)
    stake = await stake_for(net, HOUR)
    await u.approve(2 * stake)
    before = await net.balances()
    ids = []
    for nonce, direct in enumerate((True, False)):
        session_id, result = await open_session(net, offer, stake, direct=direct)
        ids.append(session_id)
        assert result.event("SessionOpened") == {"user": u.address, "sessionId": session_id,
                                                 "providerId": p.address}
        assert session_id == session_id_of(u.address, p.address, offer.bid_id, nonce)
        assert await u.call("getSessionId", u.address, p.address, offer.bid_id, nonce) == \
            session_id
        opened_at = await block_time(net, result)
        s = await u.call("getSession", session_id)
        assert (s.user, s.bidId, s.stake, s.openedAt, s.isActive, s.isDirectPaymentFromUser) == (
            u.address, offer.bid_id, stake, opened_at, True, direct)
        assert s.endsAt == opened_at + HOUR  # stipendToStake(price * 1 h) buys exactly 1 h
        assert (s.closedAt, s.closeoutType, s.providerWithdrawnAmount) == (0, 0, 0)
    assert delta(await net.balances(), before) == {"user": -2 * stake, "provider": 0,
                                                   "diamond": 2 * stake, "funding": 0}
    assert list(await u.call("getUserSessions", u.address, 0, 10)) == [ids, 2]
    assert list(await u.call("getProviderSessions", p.address, 0, 10)) == [ids, 2]
    assert list(await u.call("getModelSessions", offer.model_id, 1, 10)) == [ids[1:], 2]
    assert await u.call("getTotalSessions", p.address) == 2


# ---------------------------------------------------------------------- the whole lifecycle


async def test_lifecycle_direct_and_stake_mode_to_the_wei(net: Net) -> None:
    """Open both modes, close early with a 7- and a 5-field receipt, hold the user's share
    until the next UTC midnight, withdraw it, and claim: every wei accounted for."""
    u, p = net.user, net.provider
    await net.travel_to_time_of_day(HOUR)  # open and close on one UTC day
    offer = await onboard(net)
    stake = await stake_for(net, HOUR)
    await u.approve(2 * stake)
    start = await net.balances()
    direct_id, _ = await open_session(net, offer, stake, direct=True)
    stake_id, _ = await open_session(net, offer, stake, direct=False)
    net.travel(600)

    now, chain_id = await net.now(), u.client.chain_id
    expired = receipt(stake_id, chain_id, now - 601, fields=5)
    with reverts("SessionReceiptExpired"):
        await u.send("closeSession", expired, sign_blob(p.account, expired))
    other_chain = receipt(stake_id, chain_id + 1, now * 1000)
    with reverts("SessionReceiptForAnotherChainId"):
        await u.send("closeSession", other_chain, sign_blob(p.account, other_chain))
    good = receipt(stake_id, chain_id, now * 1000)
    with reverts("InsufficientRightsForOperation", delegator=u.address,
                 delegatee=net.other.address):
        await net.other.send("closeSession", good, sign_blob(p.account, good))

    held = 0
    paid = {}
    for session_id, fields in ((direct_id, 7), (stake_id, 5)):
        blob = receipt(session_id, chain_id, now * 1000, fields=fields)
        before = await net.balances()
        closed = await u.send("closeSession", blob, sign_blob(p.account, blob))
        closed_at = await block_time(net, closed)
        want = await expected_close(net, session_id, closed_at, closed.block_number - 1)
        moved = delta(await net.balances(), before)
        assert moved == {k: want[k] for k in moved}
        assert closed.event("SessionClosed") == {"user": u.address, "sessionId": session_id,
                                                 "providerId": p.address}
        s = await u.call("getSession", session_id)
        assert (s.closedAt, s.isActive, s.closeoutType, bytes(s.closeoutReceipt)) == (
            closed_at, False, 0, blob)
        reward = (closed_at - s.openedAt) * PRICE
        assert moved["provider"] == reward == s.providerWithdrawnAmount
        # Escrow in = paid to the provider (direct only) + refunded + held.
        to_provider = reward if s.isDirectPaymentFromUser else 0
        assert stake == to_provider + moved["user"] + want["held"]
        assert want["held"] > 0
        held += want["held"]
        paid[session_id] = reward
        with reverts("SessionAlreadyClosed"):
            await u.send("closeSession", blob, sign_blob(p.account, blob))
    assert await u.call("getProvidersTotalClaimed") == sum(paid.values())

    stats = await u.call("getProviderModelStats", offer.model_id, p.address)
    assert (stats.successCount, stats.totalCount) == (2, 2)
    assert (stats.tpsScaled1000.mean, stats.ttftMs.mean) == (25_000, 350)
    assert stats.totalDuration == sum(paid.values()) // PRICE  # seconds of both sessions
    model_stats = await u.call("getModelStats", offer.model_id)
    assert (model_stats.count, model_stats.tpsScaled1000.mean, model_stats.ttftMs.mean) == (
        1, 25_000, 350)

    # The reference's quirk: a claim the same day after an early close underflows.
    with reverts("Panic", code="0x11"):
        await p.send("claimForProvider", direct_id)

    assert list(await u.call("getUserStakesOnHold", u.address, 255)) == [0, held]
    with reverts("SessionUserAmountToWithdrawIsZero"):
        await u.send("withdrawUserStakes", u.address, 255)
    now = await net.now()
    net.travel(now - now % DAY + DAY - now + 1)
    assert list(await u.call("getUserStakesOnHold", u.address, 255)) == [held, 0]
    before = await net.balances()
    withdrawn = await u.send("withdrawUserStakes", u.address, 255)
    assert withdrawn.event("UserWithdrawn") == {"user": u.address, "amount_": held}
    assert delta(await net.balances(), before) == {"user": held, "provider": 0,
                                                   "diamond": -held, "funding": 0}
    assert list(await u.call("getUserStakesOnHold", u.address, 255)) == [0, 0]

    # After midnight nothing is held back and nothing is left to claim: a no-op.
    before = await net.balances()
    await p.send("claimForProvider", direct_id)
    assert delta(await net.balances(), before) == {"user": 0, "provider": 0, "diamond": 0,
                                                   "funding": 0}

    # Net: the user paid the direct session's provider share; funding the stake-mode one.
    total = delta(await net.balances(), start)
    assert total == {"user": -paid[direct_id], "provider": sum(paid.values()),
                     "diamond": 0, "funding": -paid[stake_id]}


async def test_claim_after_the_end_then_a_late_close(net: Net) -> None:
    """A session left open past its end: the provider claims it all, the late close refunds
    the rest with nothing held."""
    u, p = net.user, net.provider
    offer = await onboard(net)
    stake = await stake_for(net, 600)
    await u.approve(stake)
    session_id, _ = await open_session(net, offer, stake, direct=True)
    s = await u.call("getSession", session_id)
    assert s.endsAt - s.openedAt == 600

    before = await net.balances()
    await p.send("claimForProvider", session_id)  # not ended yet: nothing to claim
    assert delta(await net.balances(), before)["provider"] == 0

    net.travel(700)
    reward = 600 * PRICE
    await p.send("claimForProvider", session_id)
    assert delta(await net.balances(), before) == {"user": 0, "provider": reward,
                                                   "diamond": -reward, "funding": 0}
    assert (await u.call("getSession", session_id)).providerWithdrawnAmount == reward

    before = await net.balances()
    blob = receipt(session_id, u.client.chain_id, await net.now() * 1000)
    await u.send("closeSession", blob, sign_blob(p.account, blob))
    assert delta(await net.balances(), before) == {"user": stake - reward, "provider": 0,
                                                   "diamond": reward - stake, "funding": 0}
    assert list(await u.call("getUserStakesOnHold", u.address, 255)) == [0, 0]


async def test_provider_pay_is_capped_by_its_stake_per_period(net: Net) -> None:
    u, p = net.user, net.provider
    await net.travel_to_time_of_day(HOUR)
    stake_cap = MOR // 10  # the minimum provider stake; 600 s at PRICE earn 0.6 MOR
    offer = await onboard(net, stake=stake_cap)
    stake = await stake_for(net, HOUR)
    await u.approve(stake)
    session_id, _ = await open_session(net, offer, stake, direct=True)
    net.travel(600)
    blob = receipt(session_id, u.client.chain_id, await net.now() * 1000)
    before = await net.balances()
    closed = await u.send("closeSession", blob, sign_blob(p.account, blob))
    moved = delta(await net.balances(), before)
    want = await expected_close(net, session_id, await block_time(net, closed),
                                closed.block_number - 1)
    assert moved == {k: want[k] for k in moved}
    assert moved["provider"] == stake_cap  # not the 0.6 MOR earned
    provider = await u.call("getProvider", p.address)
    assert provider.limitPeriodEarned == provider.stake == stake_cap
    # The user still paid the full share; the unpaid part stays in the diamond.
    s = await u.call("getSession", session_id)
    reward = (s.closedAt - s.openedAt) * PRICE
    assert moved["user"] + want["held"] == stake - reward


async def test_a_receipt_not_signed_by_the_provider_closes_as_a_dispute(net: Net) -> None:
    u, p = net.user, net.provider
    await net.travel_to_time_of_day(HOUR)
    offer = await onboard(net)
    stake = await stake_for(net, HOUR)
    await u.approve(stake)
    session_id, _ = await open_session(net, offer, stake, direct=False)
    net.travel(600)
    blob = receipt(session_id, u.client.chain_id, await net.now() * 1000)
    before = await net.balances()
    closed = await u.send("closeSession", blob, sign_blob(u.account, blob))
    s = await u.call("getSession", session_id)
    assert s.closeoutType == 1
    # Today's share of the provider's pay is held back; the session was all today.
    moved = delta(await net.balances(), before)
    assert moved["provider"] == 0 and moved["funding"] == 0
    stats = await u.call("getProviderModelStats", offer.model_id, p.address)
    assert (stats.successCount, stats.totalCount, stats.tpsScaled1000.mean) == (0, 1, 0)
    assert closed.event("SessionClosed")["sessionId"] == session_id

    # A same-day claim gets nothing: today's share is exactly what is held back.
    await p.send("claimForProvider", session_id)
    assert delta(await net.balances(), before)["provider"] == 0
    # The provider is paid after the next UTC midnight, when nothing is held any more.
    now = await net.now()
    net.travel(now - now % DAY + DAY - now + 1)
    before = await net.balances()
    await p.send("claimForProvider", session_id)
    reward = (s.closedAt - s.openedAt) * PRICE
    assert delta(await net.balances(), before) == {"user": 0, "provider": reward,
                                                   "diamond": 0, "funding": -reward}


async def test_stats_are_running_means_per_provider_and_model(net: Net) -> None:
    u, p = net.user, net.provider
    offer = await onboard(net)
    stake = await stake_for(net, HOUR)
    await u.approve(3 * stake)
    for tps, ttft in ((20_000, 300), (30_000, 400), (40_000, 800)):
        session_id, _ = await open_session(net, offer, stake, direct=True)
        net.travel(60)
        blob = receipt(session_id, u.client.chain_id, await net.now() * 1000, tps, ttft)
        await u.send("closeSession", blob, sign_blob(p.account, blob))
    stats = await u.call("getProviderModelStats", offer.model_id, p.address)
    assert (stats.tpsScaled1000.mean, stats.ttftMs.mean) == (30_000, 500)
    assert (stats.successCount, stats.totalCount) == (3, 3)
    # Welford's sum of squared deviations, with integer means.
    assert stats.tpsScaled1000.sqSum == 2 * 10_000**2
    model_stats = await u.call("getModelStats", offer.model_id)
    assert model_stats.count == 1 and model_stats.tpsScaled1000.mean == 30_000


# ---------------------------------------------------------------------- the reference's own check


def _smoke_deployment(net: Net, tmp_path: Path) -> Path:
    """A deployment JSON of the shape ../shared/morpheus-ref/deploy.py writes, for the double."""
    abi_path, mor_abi_path = tmp_path / "double.abi.json", tmp_path / "mor.abi.json"
    abi_path.write_text(json.dumps(load_artifact(DOUBLE_ARTIFACT).abi))
    mor_abi_path.write_text(json.dumps(load_artifact("MorToken").abi))
    genesis = rpc(net.anvil.rpc_url, "eth_getBlockByNumber", ["0x0", False])
    assert isinstance(genesis, dict)
    d = net.deployment
    Account.enable_unaudited_hdwallet_features()
    dev = [Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
           for i in range(10)]
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps({
        "chain_id": d.chain_id, "rpc": net.anvil.rpc_url, "genesis_hash": genesis["hash"],
        "diamond": d.diamond, "mor": d.mor, "deploy_block": d.deploy_block,
        "owner": d.deployer, "deployer": d.deployer,
        "funding_account": {"address": d.funding_account},
        "dev_accounts": [{"index": i, "address": a.address, "private_key": "0x" + a.key.hex()}
                         for i, a in enumerate(dev)],
        "abi_path": str(abi_path), "mor_abi_path": str(mor_abi_path),
    }))
    return path


@pytest.mark.skipif(not SMOKE.is_file(), reason=f"no reference smoke check at {SMOKE} "
                    "(../shared/morpheus-ref; set MORPHEUS_SMOKE)")
async def test_the_reference_smoke_check_passes_against_the_double(
        net: Net, tmp_path: Path) -> None:
    await net.travel_to_time_of_day(HOUR)  # its same-day checks must not straddle midnight
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SMOKE), "--deployment", str(_smoke_deployment(net, tmp_path)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = (b.decode() for b in await asyncio.wait_for(proc.communicate(), 120))
    last = out.strip().splitlines()[-1] if out.strip() else err
    assert proc.returncode == 0 and last.startswith("morpheus reference: OK"), (
        out[-4000:] + err[-2000:])
    print(last)


async def test_test_hooks_are_owner_only(net: Net) -> None:
    """The hooks the reference lacks (all named double*) are the owner's alone."""
    o, other = net.owner, net.other
    with reverts("OwnableUnauthorizedAccount", account=other.address):
        await other.send("doubleSetFundingAccount", other.address)
    await o.send("doubleSetFundingAccount", other.address)
    assert await o.call("getFundingAccount") == other.address
    await o.send("doubleSetEmission", 100 * MOR, 100 * MOR)
    assert list(await o.call("doubleEmission")) == [100 * MOR, 100 * MOR]
    assert await o.call("stipendToStake", MOR, 0) == 100 * MOR
