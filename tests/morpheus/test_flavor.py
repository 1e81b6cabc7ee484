"""The Morpheus flavour (``chain/morpheus.py``) against a diamond: the reference's own
contracts (``make test-morpheus``) and our double (always). Every MOR movement is
checked to the wei: stake in = provider paid + refunded + held, in both payment modes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account

from proxy_router.chain.encoding import Approval, Receipt, sign_blob
from proxy_router.chain.errors import ContractReverted
from proxy_router.chain.events import MarketEvent
from proxy_router.chain.index import MarketIndex
from proxy_router.chain.morpheus import DAY, MorpheusMarketplace, bid_id_of, start_of_day
from proxy_router.chain.types import Session
from proxy_router.dev.anvil import dev_key
from proxy_router.store.db import Store

from .conftest import Diamond

PROVIDER, USER = 1, 2
PRICE = 10**15  # wei/s, inside the base-mainnet bounds (1e13..1e16)
HOUR = 3600
MOR = 10**18
STAMPS: set[int] = set()  # approval stamps used (per run: each test reverts the chain)


@dataclass
class Offer:
    provider: MorpheusMarketplace
    user: MorpheusMarketplace
    model_id: str
    bid_id: str


async def offer(diamond: Diamond) -> Offer:
    provider, user = await diamond.market(PROVIDER), await diamond.market(USER)
    await provider.register_provider(100 * MOR, "127.0.0.1:3333")
    model_id, _ = await provider.register_model(os.urandom(32), b"\0" * 32, MOR // 10,
                                                "flavour-spec", ["llm"])
    bid_id, _ = await provider.post_bid(model_id, PRICE)
    return Offer(provider, user, model_id, bid_id)


async def open_session(o: Offer, *, direct: bool, seconds: int = HOUR) -> Session:
    stake = await o.user.stake_for(PRICE, seconds, direct=direct)
    # a distinct stamp per approval: the same bytes twice would be a duplicate approval
    stamp = (await o.user.client.head())[1]
    while stamp in STAMPS:
        stamp -= 1
    STAMPS.add(stamp)
    approval = Approval(bytes.fromhex(o.bid_id[2:]), o.user.client.chain_id,
                        o.user.me, stamp).encode()
    session_id, _ = await o.user.open_session(stake, approval,
                                              sign_blob(o.provider.client.account, approval),
                                              direct=direct)
    return await o.user.get_session(session_id)


def provider_receipt(o: Offer, session: Session, now: int, fields: int = 7) -> tuple[bytes,
                                                                                    bytes]:
    blob = Receipt(bytes.fromhex(session.id[2:]), o.user.client.chain_id, now, 25_000, 350,
                   11, 42).encode()
    blob = blob if fields == 7 else blob[:5 * 32]
    return blob, sign_blob(o.provider.client.account, blob)


async def balances(o: Offer, funding: str) -> dict[str, int]:
    return {"user": await o.user.mor_balance(o.user.me),
            "provider": await o.user.mor_balance(o.provider.me),
            "diamond": await o.user.mor_balance(o.user.address),
            "funding": await o.user.mor_balance(funding)}


async def test_registration_reads_back_as_our_records(diamond: Diamond) -> None:
    o = await offer(diamond)
    provider = await o.user.get_provider(o.provider.me)
    assert provider.registered and provider.endpoint == "127.0.0.1:3333"
    assert provider.stake == 100 * MOR
    model = await o.user.get_model(o.model_id)
    assert model.exists and model.owner == o.provider.me and model.tags == ("llm",)
    bid = await o.user.get_bid(o.bid_id)
    assert bid.active and bid.model_id == o.model_id and bid.price_per_second == PRICE
    assert bid.id == bid_id_of(o.provider.me, o.model_id, bid.nonce)
    assert [b.id for b in await o.user.active_bids(o.model_id)] == [o.bid_id]
    assert o.model_id in await o.user.model_ids()


async def test_stake_is_sized_by_the_contract_so_the_session_lasts_as_asked(
        diamond: Diamond) -> None:
    o = await offer(diamond)
    for direct in (True, False):
        session = await open_session(o, direct=direct)
        assert session.direct_payment is direct
        assert HOUR <= session.ends_at - session.opened_at <= HOUR + 60
        # the diamond wants far more than price × duration: the stake buys a stipend
        assert session.stake > 100 * PRICE * HOUR


async def test_direct_session_early_close_pays_the_provider_and_holds_the_user_share(
        diamond: Diamond) -> None:
    o = await offer(diamond)
    start = await balances(o, diamond.net.funding_account)
    session = await open_session(o, direct=True)
    before = await balances(o, diamond.net.funding_account)
    assert start["user"] - before["user"] == session.stake
    diamond.increase_time(600)
    now = await diamond.now()
    tx = await o.user.close_session(*provider_receipt(o, session, now))
    settled = await o.user.settled(tx, session)
    after = await balances(o, diamond.net.funding_account)
    closed = await o.user.get_session(session.id)
    used = closed.closed_at - closed.opened_at

    assert settled.provider_earned == used * PRICE == closed.provider_earned
    assert settled.provider_earned + settled.user_refund + settled.held == session.stake
    assert after["provider"] - before["provider"] == settled.provider_earned
    assert after["user"] - before["user"] == settled.user_refund
    assert before["diamond"] - after["diamond"] == settled.provider_earned + settled.user_refund
    assert after["funding"] == before["funding"]
    available, hold = await o.user.held_stakes(o.user.me)
    assert (available, hold) == (0, settled.held) and settled.held > 0
    assert closed.claimed and o.provider.claimable(closed, now) == 0  # paid at close

    # after the next UTC midnight the held share comes back: the user paid only the time
    diamond.increase_time(start_of_day(now) + DAY - now + 1)
    assert await o.user.held_stakes(o.user.me) == (settled.held, 0)
    await o.user.withdraw_held()
    final = await balances(o, diamond.net.funding_account)
    assert start["user"] - final["user"] == settled.provider_earned
    assert await o.user.held_stakes(o.user.me) == (0, 0)


async def test_stake_mode_session_is_paid_by_the_funding_account(diamond: Diamond) -> None:
    o = await offer(diamond)
    start = await balances(o, diamond.net.funding_account)
    session = await open_session(o, direct=False)
    before = await balances(o, diamond.net.funding_account)
    diamond.increase_time(600)
    now = await diamond.now()
    tx = await o.user.close_session(*provider_receipt(o, session, now, fields=5))
    settled = await o.user.settled(tx, session)
    after = await balances(o, diamond.net.funding_account)

    earned = (await o.user.get_session(session.id)).provider_earned
    assert settled.provider_earned == earned
    assert after["provider"] - before["provider"] == earned
    assert before["funding"] - after["funding"] == earned
    assert settled.user_refund + settled.held == session.stake  # the whole stake is the user's
    diamond.increase_time(DAY + 1)
    await o.user.withdraw_held()
    assert (await balances(o, diamond.net.funding_account))["user"] == start["user"]


async def test_provider_claims_a_session_its_user_never_closed(diamond: Diamond) -> None:
    o = await offer(diamond)
    session = await open_session(o, direct=True, seconds=600)
    assert o.provider.claimable(session, await diamond.now()) == 0  # not over yet
    diamond.increase_time(session.ends_at - await diamond.now() + 1)
    now = await diamond.now()
    owed = o.provider.claimable(await o.provider.get_session(session.id), now)
    assert owed == (session.ends_at - session.opened_at) * PRICE
    before = await o.provider.mor_balance(o.provider.me)
    await o.provider.claim_for_provider(session.id)
    assert await o.provider.mor_balance(o.provider.me) - before == owed
    claimed = await o.provider.get_session(session.id)
    assert claimed.claimed_amount == owed and o.provider.claimable(claimed, now) == 0


async def test_stats_are_the_diamonds_means_as_sums(diamond: Diamond) -> None:
    o = await offer(diamond)
    for _ in range(2):
        session = await open_session(o, direct=True)
        diamond.increase_time(60)
        await o.user.close_session(*provider_receipt(o, session, await diamond.now()))
    stats = await o.user.get_stats(o.provider.me, o.model_id)
    assert (stats.total_count, stats.success_count) == (2, 2)
    assert stats.mean_tps == 25.0 and stats.mean_ttft_ms == 350.0


async def test_index_starts_from_the_paged_views_and_derives_settlements(
        diamond: Diamond, tmp_path: Path) -> None:
    o = await offer(diamond)
    store = await Store.open(tmp_path, "index")
    try:
        index = MarketIndex(await diamond.market(USER), store)
        seen: list[MarketEvent] = []
        index.subscribe(seen.append)
        await index.poll_once()
        assert o.provider.me in index.providers and o.bid_id in index.bids
        assert index.checkpoint == index.head  # no log before the head was read

        session = await open_session(o, direct=True)
        diamond.increase_time(60)
        await o.user.close_session(*provider_receipt(o, session, await diamond.now()))
        await index.poll_once()
        names = [e.name for e in seen]
        assert names == ["SessionOpened", "SessionClosed", "SessionSettled"]
        settled = seen[-1]
        assert settled.session_id == session.id
        assert settled.provider_earned == index.sessions[session.id].provider_earned > 0
    finally:
        await store.close()


async def test_a_foreign_signature_and_a_reused_approval_revert(diamond: Diamond) -> None:
    o = await offer(diamond)
    stake = await o.user.stake_for(PRICE, HOUR)
    approval = Approval(bytes.fromhex(o.bid_id[2:]), o.user.client.chain_id, o.user.me,
                        await diamond.now()).encode()
    stranger = Account.from_key(dev_key(5))
    with pytest.raises(ContractReverted, match="SessionProviderSignatureMismatch"):
        await o.user.open_session(stake, approval, sign_blob(stranger, approval))
    good = sign_blob(o.provider.client.account, approval)
    await o.user.open_session(stake, approval, good)
    with pytest.raises(ContractReverted, match="SessionDuplicateApproval"):
        await o.user.open_session(stake, approval, good)
