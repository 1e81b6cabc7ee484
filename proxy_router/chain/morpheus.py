"""The Morpheus-Lumerin flavour: the diamond on BASE, read into our records.

Facts from the reference (``docs/morpheus-facts.md``, ``../shared/morpheus-ref``), with
the ABI of our own interface (``contracts/morpheus/IMorpheusDiamond.sol``):

- writes are principal-first (``providerRegister(provider, …)``); the principal is
  always our own wallet;
- the diamond has no bid id in ``MarketplaceBidPosted``: it is
  ``keccak256(provider, modelId, nonce)``; its ``Session`` has no provider, model or
  price: they are read from the session's bid (bids never change but for deletion);
- a session's length comes from its stake in both payment modes
  (``getSessionEnd``/``stakeToStipend``): ``price × duration`` buys ~1/300 of it, so the
  stake is sized with the contract's own ``stipendToStake`` and checked against
  ``getSessionEnd``;
- an early close puts part of the user's stake on hold until the next UTC midnight
  (``withdrawUserStakes``); ``claimForProvider`` reverts with ``Panic(0x11)`` when
  nothing is owed the same day, so we only call it for a positive ``claimable``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, ClassVar

from eth_abi.packed import encode_packed
from eth_utils import keccak

from proxy_router.chain.client import TxResult
from proxy_router.chain.events import MarketEvent
from proxy_router.chain.flavor import (
    Block,
    Flavor,
    MarketplaceBase,
    Settled,
    to_bytes32,
)
from proxy_router.chain.types import (
    Bid,
    MarketRecord,
    Model,
    Provider,
    ProviderModelStats,
    Session,
    normalize_address,
    normalize_id,
    same_address,
)

DAY = 86_400
HOLD_ITERATIONS = 255  # the most ``withdrawUserStakes`` takes (a uint8)
STAKE_MARGIN_PPM = 2_000
"""Extra stake (0.2 %) so the session still lasts the duration asked for when the
block that opens it is later than the estimate (the emission falls day by day)."""
OPEN_LEAD_S = 120  # how far ahead of "now" a stake is checked to still suffice
OWN_SESSIONS = 500  # the newest of our own sessions a snapshot reads
# The diamond's event names → the vocabulary the roles listen to (``events.py``).
EVENT_NAMES = {"ModelRegisteredUpdated": "ModelRegistered",
               "MarketplaceBidPosted": "BidPosted", "MarketplaceBidDeleted": "BidDeleted"}


def bid_id_of(provider: str, model_id: str | bytes, nonce: int) -> str:
    return "0x" + keccak(encode_packed(["address", "bytes32", "uint256"],
                                       [normalize_address(provider), to_bytes32(model_id),
                                        nonce])).hex()


def model_id_of(owner: str, base_model_id: bytes) -> str:
    return "0x" + keccak(encode_packed(["address", "bytes32"],
                                       [normalize_address(owner), base_model_id])).hex()


def start_of_day(timestamp: int) -> int:
    return timestamp - timestamp % DAY


class MorpheusMarketplace(MarketplaceBase):
    flavor: Flavor = "morpheus"
    artifact = "IMorpheusDiamond"
    GETTERS: ClassVar[dict[str, str]] = {
        "provider_min_stake": "getProviderMinimumStake",
        "model_min_stake": "getModelMinimumStake", "bid_fee": "getBidFee",
        "model_ids": "getActiveModelIds", "bids_of_model": "getModelActiveBids",
        "bids_of_provider": "getProviderActiveBids", "user_sessions": "getUserSessions",
        "provider_sessions": "getProviderSessions"}

    def __init__(self, client: Any, marketplace_address: str, mor_token_address: str) -> None:
        super().__init__(client, marketplace_address, mor_token_address)
        self._bids: dict[str, Bid] = {}  # bids read once: only deletion changes them

    @property
    def me(self) -> str:
        return normalize_address(self.client.address)

    # -- writes -----------------------------------------------------------------

    async def register_provider(self, amount: int, endpoint: str) -> TxResult:
        await self.ensure_allowance(amount)
        return await self.client.transact(self.contract, "providerRegister", self.me,
                                          amount, endpoint)

    async def deregister_provider(self) -> TxResult:
        return await self.client.transact(self.contract, "providerDeregister", self.me)

    async def register_model(self, base_model_id: bytes, ipfs_cid: bytes, amount: int,
                             name: str, tags: list[str], *, fee: int = 0
                             ) -> tuple[str, TxResult]:
        await self.ensure_allowance(amount)
        tx = await self.client.transact(self.contract, "modelRegister", self.me,
                                        base_model_id, ipfs_cid, fee, amount, name, tags)
        return normalize_id(bytes(tx.event("ModelRegisteredUpdated")["modelId"])), tx

    async def post_bid(self, model_id: str | bytes, price_per_second: int
                       ) -> tuple[str, TxResult]:
        fee = await self.bid_fee()
        if fee:
            await self.ensure_allowance(fee)
        tx = await self.client.transact(self.contract, "postModelBid", self.me,
                                        to_bytes32(model_id), price_per_second)
        posted = tx.event("MarketplaceBidPosted")
        return bid_id_of(posted["provider"], bytes(posted["modelId"]), posted["nonce"]), tx

    async def stake_for(self, price_per_second: int, seconds: int, *,
                        direct: bool = True) -> int:
        """The stake whose stipend pays ``seconds`` at ``price_per_second`` (both modes:
        the diamond derives every session's length from its stake)."""
        seconds = min(seconds, await self.param("getMaxSessionDuration"))
        head = await self.client.head()
        at = max(int(time.time()), head[1]) + OPEN_LEAD_S
        stake = int(await self.client.call(self.contract, "stipendToStake",
                                           price_per_second * seconds, at))
        stake += stake * STAKE_MARGIN_PPM // 1_000_000 + 1
        for _ in range(8):  # rounding in the emission: grow until the end is reached
            end = int(await self.client.call(self.contract, "getSessionEnd", stake,
                                             price_per_second, at))
            if end - at >= seconds:
                return stake
            stake += stake // 100 + 1
        return stake

    async def open_session(self, amount: int, approval: bytes, signature: bytes, *,
                           direct: bool = True) -> tuple[str, TxResult]:
        await self.ensure_allowance(amount)
        tx = await self.client.transact(self.contract, "openSession", self.me, amount,
                                        direct, approval, signature)
        return normalize_id(bytes(tx.event("SessionOpened")["sessionId"])), tx

    async def claim_for_provider(self, session_id: str | bytes) -> TxResult:
        return await self.client.transact(self.contract, "claimForProvider",
                                          to_bytes32(session_id))

    async def withdraw_held(self, iterations: int = HOLD_ITERATIONS) -> TxResult:
        """Take back the user's stakes whose hold has ended (after the UTC midnight
        that followed their early close)."""
        return await self.client.transact(self.contract, "withdrawUserStakes", self.me,
                                          iterations)

    async def held_stakes(self, user: str, iterations: int = HOLD_ITERATIONS
                          ) -> tuple[int, int]:
        """(withdrawable now, still on hold) of ``user``'s stakes."""
        available, hold = await self.client.call(self.contract, "getUserStakesOnHold",
                                                 normalize_address(user), iterations)
        return int(available), int(hold)

    def approval_key(self, user: str, provider: str, bid_id: bytes, approval: bytes) -> str:
        """The approval itself: the session id it opens takes a global nonce the
        diamond assigns at open, unknown when we sign."""
        return "0x" + approval.hex()

    async def approval_used(self, key: str) -> bool:
        return bool(await self.client.call(self.contract, "getIsProviderApprovalUsed",
                                           bytes.fromhex(key[2:])))

    def claimable(self, session: Session, now: int) -> int:
        """What ``claimForProvider`` would pay now (0: do not call it, it would revert).

        The provider's share so far minus what it withdrew, minus the day's part of an
        early close that is held until the next UTC midnight."""
        end = min(session.closed_at, session.ends_at) if session.closed else session.ends_at
        if now < end:
            return 0
        owed = (end - session.opened_at) * session.price_per_second - session.claimed_amount
        if session.closed and now < start_of_day(session.closed_at) + DAY:
            owed -= (session.closed_at - max(start_of_day(session.closed_at),
                                             session.opened_at)) * session.price_per_second
        return max(0, owed)

    # -- views ------------------------------------------------------------------

    async def get_provider(self, address: str, *, block: Block = "latest") -> Provider:
        address = normalize_address(address)
        raw = await self._view("getProvider", address, block=block)
        return Provider(id=address, endpoint=raw["endpoint"], stake=int(raw["stake"]),
                        created_at=int(raw["createdAt"]), is_deleted=bool(raw["isDeleted"]))

    async def get_model(self, model_id: str | bytes, *, block: Block = "latest") -> Model:
        raw = await self._view("getModel", to_bytes32(model_id), block=block)
        return Model(id=normalize_id(model_id), owner=normalize_address(raw["owner"]),
                     ipfs_cid=raw["ipfsCID"], stake=int(raw["stake"]), name=raw["name"],
                     tags=tuple(raw["tags"]), created_at=int(raw["createdAt"]),
                     is_deleted=bool(raw["isDeleted"]))

    async def get_bid(self, bid_id: str | bytes, *, block: Block = "latest") -> Bid:
        raw = await self._view("getBid", to_bytes32(bid_id), block=block)
        bid = Bid(id=normalize_id(bid_id), provider=normalize_address(raw["provider"]),
                  model_id=raw["modelId"], price_per_second=int(raw["pricePerSecond"]),
                  nonce=int(raw["nonce"]), created_at=int(raw["createdAt"]),
                  deleted_at=int(raw["deletedAt"]))
        if bid.created_at:
            self._bids[bid.id] = bid
        return bid

    async def _bid(self, bid_id: str, block: Block) -> Bid:
        return self._bids.get(bid_id) or await self.get_bid(bid_id, block=block)

    async def get_session(self, session_id: str | bytes, *,
                          block: Block = "latest") -> Session:
        """The session, with its bid's provider, model and price.

        Amounts once closed: ``provider_earned`` is ``(min(closedAt, endsAt) − openedAt) ×
        price``; ``user_refund`` is the stake less what paid the provider (direct
        payment) or the whole stake (stake mode: the funding account pays), part of it
        possibly on hold until midnight; ``held`` is the provider's share not
        withdrawn yet."""
        raw = await self._view("getSession", to_bytes32(session_id), block=block)
        ident = normalize_id(session_id)
        opened = int(raw["openedAt"])
        if not opened:
            return Session(id=ident)
        bid = await self._bid(normalize_id(raw["bidId"]), block)
        closed_at, ends_at, stake = int(raw["closedAt"]), int(raw["endsAt"]), int(raw["stake"])
        direct = bool(raw["isDirectPaymentFromUser"])
        withdrawn = int(raw["providerWithdrawnAmount"])
        earned = refund = held = release = 0
        if closed_at:
            earned = (min(closed_at, ends_at) - opened) * bid.price_per_second
            refund = stake - earned if direct else stake
            held = max(0, earned - withdrawn)
            release = start_of_day(closed_at) + DAY if held else 0
        return Session(
            id=ident, user=normalize_address(raw["user"]), provider=bid.provider,
            bid_id=bid.id, model_id=bid.model_id, stake=stake,
            price_per_second=bid.price_per_second, opened_at=opened, ends_at=ends_at,
            closed_at=closed_at, provider_earned=earned, user_refund=refund, held=held,
            release_at=release, disputed=int(raw["closeoutType"]) == 1,
            closed=bool(closed_at), claimed=bool(closed_at) and held == 0,
            direct_payment=direct, claimed_amount=withdrawn)

    async def get_stats(self, provider: str, model_id: str | bytes) -> ProviderModelStats:
        """The diamond keeps running means: sums are ``mean × successCount``."""
        raw = await self._view("getProviderModelStats", to_bytes32(model_id),
                               normalize_address(provider), block="latest")
        n = int(raw["successCount"])
        return ProviderModelStats(
            total_count=int(raw["totalCount"]), success_count=n,
            tps_x1000_sum=int(raw["tpsScaled1000"]["mean"]) * n,
            ttft_ms_sum=int(raw["ttftMs"]["mean"]) * n)

    # -- paged lists ------------------------------------------------------------

    async def _newest_ids(self, fn: str, account: str, block: int) -> list[str]:
        _, total = await self._page(fn, account, offset=0, limit=0, block=block)
        start = max(0, total - OWN_SESSIONS)
        ids, _ = await self._page(fn, account, offset=start, limit=total - start, block=block)
        return [normalize_id(bytes(i)) for i in ids]

    async def snapshot_ids(self, block: int) -> dict[str, set[str]]:
        providers = await self._all("getActiveProviders", block=block)
        models = await self._all_ids("getActiveModelIds", block=block)
        bids: set[str] = set()
        for model_id in models:
            bids.update(await self._all_ids("getModelActiveBids", to_bytes32(model_id),
                                            block=block))
        sessions: set[str] = set()
        if self.client.account is not None:
            for fn in ("getUserSessions", "getProviderSessions"):
                sessions.update(await self._newest_ids(fn, self.me, block))
        return {"provider": {normalize_address(p) for p in providers}, "model": set(models),
                "bid": bids, "session": sessions}

    # -- events -----------------------------------------------------------------

    def _event(self, name: str, block: int, args: dict[str, Any]) -> MarketEvent | None:
        if name in ("MarketplaceBidPosted", "MarketplaceBidDeleted"):
            args = {**args, "bidId": bytes.fromhex(
                bid_id_of(args["provider"], bytes(args["modelId"]), args["nonce"])[2:])}
        elif name in ("SessionOpened", "SessionClosed"):
            args = {**args, "provider": args["providerId"]}
        elif name == "UserWithdrawn":
            args = {"user": args["user"], "amount": args["amount_"]}
        elif name not in ("ProviderRegistered", "ProviderDeregistered",
                          "ModelRegisteredUpdated", "ModelDeregistered"):
            return None
        return MarketEvent.from_args(EVENT_NAMES.get(name, name), block, args)

    def derived_events(self, events: Iterable[MarketEvent],
                       records: Iterable[tuple[str, MarketRecord]]) -> list[MarketEvent]:
        """A ``SessionSettled`` for each close, from the session read back after it."""
        sessions = {r.id: r for kind, r in records if isinstance(r, Session)}
        out = []
        for event in events:
            session = sessions.get(event.session_id or "")
            if event.name == "SessionClosed" and session is not None and session.closed:
                out.append(MarketEvent(
                    "SessionSettled", event.block, provider=session.provider,
                    user=session.user, model_id=session.model_id, bid_id=session.bid_id,
                    session_id=session.id, provider_earned=session.provider_earned,
                    user_refund=session.user_refund, held=session.held,
                    disputed=session.disputed))
        return out

    async def settled(self, tx: TxResult, session: Session) -> Settled:
        """Read off the MOR ``Transfer``s of the close: what reached the provider (from
        the stake or, in stake mode, the funding account) and the user; the rest of the
        stake is on hold until midnight."""
        diamond = self.address
        to_provider = to_user = from_stake = 0
        for name, args in tx.events:
            if name != "Transfer":
                continue
            value = int(args["value"])
            if same_address(args["to"], session.provider):
                to_provider += value
                from_stake += value if same_address(args["from"], diamond) else 0
            elif same_address(args["to"], session.user) and same_address(args["from"],
                                                                          diamond):
                to_user += value
        after = await self.get_session(session.id)
        return Settled(provider_earned=to_provider, user_refund=to_user,
                       held=session.stake - from_stake - to_user, disputed=after.disputed)
