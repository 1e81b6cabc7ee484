"""The consumer's sessions: pick a bid, get an approval, escrow MOR, settle.

Opening: rate the model's active bids, ask the best provider for an approval
over MOR-RPC (``session.request``), check it before paying gas, raise the MOR
allowance when needed and call ``openSession``; a provider that refuses or is
unreachable is skipped for the next-rated bid. Closing is ``settlement.Settler``'s:
the provider's signed receipt (``session.report``), else our own (a dispute), so
MOR is never stuck in escrow.

A session is paid by the second from its opening to its close, so the sweeper
closes it at its end, when a session opened for a chat request has been idle for
``idle_timeout_s``, and when the provider reports it over before we noticed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import structlog
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes

from proxy_router.chain.encoding import Approval, recover_blob_signer
from proxy_router.chain.errors import ChainError, ContractReverted
from proxy_router.chain.events import MarketEvent
from proxy_router.chain.index import MarketIndex
from proxy_router.chain.markets import Market
from proxy_router.chain.types import Bid, ProviderModelStats, Session, same_address
from proxy_router.consumer.domain_errors import (
    BidNotActive,
    BidNotFound,
    ConsumerError,
    InsufficientMor,
    NoBids,
    NoProviderAvailable,
    OpenSessionReverted,
    SessionClosed,
)
from proxy_router.consumer.links import LinkPool
from proxy_router.consumer.rating import RatedBid, rate_bids
from proxy_router.consumer.settlement import Settler
from proxy_router.morrpc import (
    ErrorCode,
    RpcError,
    RpcUnavailable,
    SessionKey,
)
from proxy_router.store.db import Store

log = structlog.get_logger(__name__)

# A session this close to its end is not used for a new prompt.
END_MARGIN_S = 15


class LocalStatus(StrEnum):
    """A session as this consumer uses it (stored as the value)."""

    OPEN = "open"
    CLOSING = "closing"
    """Not used again; settled in the background, else by the sweeper: as a dispute when
    failover dropped it, with the provider's receipt when the provider reported it over."""
    CLOSED = "closed"


class Turns(asyncio.Semaphore):
    """A session's prompt slots, counting those taken: a session that is answering is
    never idle (however long the answer), and its idle time starts when the last ends."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.taken = 0
        self.freed_at = 0.0
        """When an answer last gave its slot back (``time.time()``; 0: none yet)."""

    async def acquire(self) -> Literal[True]:
        await super().acquire()
        self.taken += 1
        return True

    def release(self) -> None:
        self.taken -= 1
        self.freed_at = time.time()
        super().release()


@dataclass
class ConsumerSession:
    session_id: str
    model_id: str
    bid_id: str
    provider: str
    endpoint: str
    key: SessionKey
    stake: int
    opened_at: int
    ends_at: int
    status: LocalStatus = LocalStatus.OPEN
    prompt_limit: int = 1
    """Prompts the provider runs at once on this session (its ``promptsPerSession``)."""
    price_per_second: int = 0
    """The bid's price in MOR wei (0 until known for a session loaded from the store)."""
    auto: bool = True
    """Opened for a chat request, so closed when idle. One opened through the API lives
    until it is closed or ends (the user chose its length); one loaded from the store
    counts as auto (its origin is not stored, and an idle close is the cheaper mistake)."""
    ended_by_provider: bool = False
    """The provider reported it over (CLOSING): settle with its receipt, no dispute."""
    turns: Turns = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.turns = Turns(self.prompt_limit)

    def cost_so_far(self, now: int) -> int:
        """MOR wei the provider has earned on it by ``now``: the contract's charge for
        the seconds since it opened (``Session.cost_so_far``)."""
        return Session(self.session_id, stake=self.stake, price_per_second=self.price_per_second,
                       opened_at=self.opened_at, ends_at=self.ends_at).cost_so_far(now)

    def row(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "model_id": self.model_id,
                "bid_id": self.bid_id, "provider": self.provider, "endpoint": self.endpoint,
                "session_key": self.key.to_hex(), "stake": str(self.stake),
                "opened_at": self.opened_at, "ends_at": self.ends_at,
                "status": self.status.value}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ConsumerSession:
        return cls(session_id=row["session_id"], model_id=row["model_id"],
                   bid_id=row["bid_id"], provider=row["provider"], endpoint=row["endpoint"],
                   key=SessionKey.from_hex(row["session_key"]), stake=int(row["stake"]),
                   opened_at=int(row["opened_at"]), ends_at=int(row["ends_at"]),
                   status=LocalStatus(row["status"]))

    def public(self) -> dict[str, Any]:
        """The API's view (``schemas.LocalSession``): everything but the session key."""
        return public_row({**self.row(), "close_tx": None})


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """A stored session row as the API shows it (``schemas.LocalSession``)."""
    return {"sessionId": row["session_id"], "modelId": row["model_id"],
            "bidId": row["bid_id"], "provider": row["provider"], "endpoint": row["endpoint"],
            "stake": row["stake"], "openedAt": row["opened_at"], "endsAt": row["ends_at"],
            "status": row["status"], "closeTx": row.get("close_tx")}


class SessionManager:
    """This wallet's sessions. Failures are ``domain_errors``, a provider's ``RpcError``
    or ``RpcUnavailable``, or a ``ChainError``: what the client sees is the API's call."""

    def __init__(self, *, account: LocalAccount, market: Market, index: MarketIndex,
                 store: Store, pool: LinkPool, allowlist: set[str] | None = None,
                 idle_timeout_s: int = 0, direct_payment: bool = True) -> None:
        self.account = account
        self.direct_payment = direct_payment
        """How sessions are paid (Morpheus: False = stake mode, the emission pays)."""
        self.market = market
        self.index = index
        self.store = store
        self.pool = pool
        self.allowlist = allowlist or None
        self.idle_timeout_s = idle_timeout_s
        self.sessions: dict[str, ConsumerSession] = {}
        self.last_used: dict[str, float] = {}
        self._open_lock: dict[str, asyncio.Lock] = {}
        self._close_lock: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._settling: set[str] = set()
        """Sessions whose close is under way: no new prompt is sent on them."""
        self.settler = Settler(market, pool, account, clock=lambda: self.index.chain_now(),
                               endpoint_of=self._indexed_endpoint)
        index.subscribe(self._on_event)

    async def load(self) -> None:
        """Rehydrate open sessions from the store, then reconcile with the chain."""
        now = time.time()
        for row in await self.store.consumer_sessions(LocalStatus.OPEN.value):
            session = ConsumerSession.from_row(row)
            bid = self.index.bids.get(session.bid_id)
            session.price_per_second = bid.price_per_second if bid is not None else 0
            self.sessions[session.session_id] = session
            self.last_used[session.session_id] = now
        try:
            await self.reconcile()
        except ChainError as exc:
            log.warning("reconcile_deferred", error=str(exc))

    async def reconcile(self) -> None:
        """Sessions the chain says are open but the store does not know (a crash
        between ``openSession`` and the store write) are settled at once: without
        their key they cannot be used, and their MOR must not stay in escrow.
        Sessions the store thinks open but the chain closed are marked closed."""
        offset, limit = 0, 200
        while True:
            ids, total = await self.market.sessions_of_user(self.account.address, offset, limit)
            for session_id in ids:
                known = self.sessions.get(session_id)
                onchain = await self.market.get_session(session_id)
                if known is not None and not known.price_per_second:
                    known.price_per_second = onchain.price_per_second
                if onchain.closed:
                    if known is not None and known.status is LocalStatus.OPEN:
                        await self._mark_closed(session_id)
                elif known is None or known.status is not LocalStatus.OPEN:
                    log.warning("orphan_session_closing", session=session_id)
                    await self.close(session_id)
            offset += limit
            if offset >= total:
                break

    @property
    def open_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.status is LocalStatus.OPEN)

    def touch(self, session_id: str) -> None:
        self.last_used[session_id] = time.time()

    async def sweep(self) -> None:
        """Close sessions whose time is up, auto-opened ones idle past ``idle_timeout_s``
        (none while it answers), and those given up (dropped by failover, reported over by
        the provider) whose close failed, e.g. the chain was down: retried every round,
        so the unused stake is refunded rather than left for the provider to close."""
        now_chain, now = self.index.chain_now(), time.time()
        for session in list(self.sessions.values()):
            if session.status is LocalStatus.CLOSED:
                continue
            idle = now - max(self.last_used.get(session.session_id, now),
                             session.turns.freed_at)
            if session.status is LocalStatus.CLOSING:
                reason = "ended" if session.ended_by_provider else "failover"
            elif now_chain >= session.ends_at:
                reason = "expired"
            elif (session.auto and self.idle_timeout_s and not session.turns.taken
                  and idle >= self.idle_timeout_s):
                reason = "idle"
            else:
                continue
            try:
                result = await self.close(session.session_id, dispute=reason == "failover")
                log.info("session_auto_closed", reason=reason, **result)
            except ConsumerError as exc:
                log.info("session_auto_close_skipped", session=session.session_id,
                         reason=str(exc))
            except ChainError as exc:
                log.warning("session_auto_close_failed", session=session.session_id,
                            error=str(exc))

    async def _on_event(self, event: MarketEvent) -> None:
        """A session closed on chain by the provider is noticed here (one we were still
        closing too: its close would only fail, and the store must stop listing it open)."""
        if event.name != "SessionClosed" or event.session_id is None:
            return
        session = self.sessions.get(event.session_id)
        if session is not None and session.status is not LocalStatus.CLOSED:
            session.status = LocalStatus.CLOSED
            await self.store.set_consumer_session_status(session.session_id,
                                                         LocalStatus.CLOSED.value)

    # -- rating ------------------------------------------------------------------

    async def rated_bids(self, model_id: str, exclude: set[str] = frozenset()  # type: ignore[assignment]
                         ) -> list[RatedBid]:
        bids = self.index.active_bids(model_id)
        stats: dict[str, ProviderModelStats] = {}
        for provider in {b.provider for b in bids}:
            try:
                stats[provider.lower()] = await self.market.get_stats(provider, model_id)
            except ChainError:
                stats[provider.lower()] = ProviderModelStats()
        return rate_bids(bids, stats, allowlist=self.allowlist,
                         exclude_provider=self.account.address, exclude_providers=exclude)

    # -- opening -----------------------------------------------------------------

    def current(self, model_id: str, exclude: set[str] = frozenset()  # type: ignore[assignment]
                ) -> ConsumerSession | None:
        """An open session for ``model_id`` with time left, the longest-lived first."""
        now = self.index.chain_now()
        usable = [s for s in self.sessions.values()
                  if s.status is LocalStatus.OPEN and s.model_id.lower() == model_id.lower()
                  and s.ends_at - now > END_MARGIN_S and s.provider.lower() not in exclude
                  and s.session_id not in self._settling]
        return max(usable, key=lambda s: s.ends_at) if usable else None

    async def session_for_model(self, model_id: str, duration: int,
                                exclude: set[str] = frozenset()  # type: ignore[assignment]
                                ) -> ConsumerSession:
        """Reuse an open session for the model, or open one on the best bid."""
        lock = self._open_lock.setdefault(model_id.lower(), asyncio.Lock())
        async with lock:  # concurrent first requests share one new session
            existing = self.current(model_id, exclude)
            if existing is not None:
                return existing
            return await self.open_for_model(model_id, duration, exclude, auto=True)

    async def open_for_model(self, model_id: str, duration: int,
                             exclude: set[str] = frozenset(),  # type: ignore[assignment]
                             *, auto: bool = False) -> ConsumerSession:
        """Open a session on the model's best-rated bid whose provider agrees; ``auto``:
        for a chat request (closed when idle), else the API's (lives until closed)."""
        rated = await self.rated_bids(model_id, exclude)
        if not rated:
            raise NoBids(f"no active bid for model {model_id} (from an allowed provider)")
        reasons = []
        for candidate in rated:
            try:
                return await self.open_for_bid(candidate.bid, duration, auto=auto)
            except (RpcError, RpcUnavailable) as exc:
                reasons.append(f"{candidate.bid.provider}: {exc}")
                log.warning("provider_refused_session", provider=candidate.bid.provider,
                            error=str(exc))
        raise NoProviderAvailable("no provider could open a session: " + "; ".join(reasons))

    async def find_bid(self, bid_id: str) -> Bid:
        """A bid by lower-case 0x id: from the index, else read from the chain."""
        bid = self.index.bids.get(bid_id) or await self.market.get_bid(bid_id)
        if not bid.created_at:
            raise BidNotFound(f"bid {bid_id} does not exist")
        return bid

    async def open_for_bid(self, bid: Bid, duration: int, *, auto: bool = False
                           ) -> ConsumerSession:
        bid_id = bid.id
        if bid.deleted_at:
            raise BidNotActive(f"bid {bid_id} is not active")
        price = bid.price_per_second
        stake = await self.market.stake_for(price, duration, direct=self.direct_payment)
        balance = await self.market.mor_balance(self.account.address)
        if balance < stake:
            raise InsufficientMor(f"a {duration}s session at {price} wei/s needs {stake} "
                                  f"MOR wei; the wallet holds {balance}")
        provider = bid.provider
        endpoint = self._endpoint(provider)
        client = self.pool.get(endpoint, provider)
        key = SessionKey.generate()
        reply = await client.call("session.request", {"bidId": bid_id, "spend": str(stake),
                                                      "key": key.public_key_hex})
        approval, signature = self._check_approval(reply, bid_id, provider)
        try:
            session_id, tx = await self.market.open_session(stake, approval, signature,
                                                            direct=self.direct_payment)
        except ContractReverted as exc:
            raise OpenSessionReverted(f"openSession reverted: {exc.reason}") from None
        onchain = await self.market.get_session(session_id)
        limit = reply.get("promptsPerSession", 1)
        session = ConsumerSession(
            session_id=session_id.lower(), model_id=bid.model_id.lower(), bid_id=bid_id,
            provider=provider, endpoint=endpoint, key=key, stake=stake,
            opened_at=onchain.opened_at, ends_at=onchain.ends_at,
            prompt_limit=_prompt_limit(limit),
            price_per_second=onchain.price_per_second or price, auto=auto)
        await self.store.add_consumer_session(session.row())
        self.sessions[session.session_id] = session
        self.touch(session.session_id)
        log.info("session_opened", session=session.session_id, provider=provider,
                 stake=str(stake), gas=tx.gas_used)
        return session

    def _endpoint(self, provider: str) -> str:
        info = self.index.provider(provider)
        if not info or not info.endpoint or info.is_deleted:
            raise RpcUnavailable(f"provider {provider} has no registered endpoint")
        return info.endpoint

    def _check_approval(self, reply: dict[str, Any], bid_id: str,
                        provider: str) -> tuple[bytes, bytes]:
        """Verify the approval before spending gas on a transaction that would revert."""
        try:
            approval = bytes(HexBytes(reply["approval"]))
            signature = bytes(HexBytes(reply["approvalSig"]))
            decoded = Approval.decode(approval)
            signer = recover_blob_signer(approval, signature)
        except (KeyError, ValueError, TypeError) as exc:
            raise RpcError(ErrorCode.BAD_REQUEST, f"malformed approval: {exc}") from None
        if ("0x" + decoded.bid_id.hex()) != bid_id.lower():
            raise RpcError(ErrorCode.BAD_REQUEST, "approval is for another bid")
        if not same_address(decoded.user, self.account.address):
            raise RpcError(ErrorCode.BAD_REQUEST, "approval is for another user")
        if decoded.chain_id != self.market.client.chain_id:
            raise RpcError(ErrorCode.BAD_REQUEST, "approval is for another chain")
        if not same_address(signer, provider):
            raise RpcError(ErrorCode.BAD_SIGNATURE,
                           "approval is not signed by the bid's provider")
        return approval, signature

    # -- closing -----------------------------------------------------------------

    async def close(self, session_id: str, *, dispute: bool = False) -> dict[str, Any]:
        """Settle a session on chain; returns the amounts and the transaction.

        ``dispute`` settles with our own receipt instead of the provider's: for a
        session abandoned because the provider failed, so it is not counted a success.
        """
        session_id = session_id.lower()
        lock = self._close_lock.setdefault(session_id, asyncio.Lock())
        async with lock:  # the sweeper and a user's close must not both send a tx
            self._settling.add(session_id)
            try:
                return await self._close(session_id, dispute)
            finally:
                self._settling.discard(session_id)

    async def chain_session(self, session_id: str) -> Session:
        """The session as the contract sees it; ``SessionNotFound`` if there is none."""
        return await self.settler.chain_session(session_id)

    async def _close(self, session_id: str, dispute: bool = False) -> dict[str, Any]:
        session = self.sessions.get(session_id)
        try:
            settled = await self.settler.settle(
                session_id, endpoint=session.endpoint if session else None, dispute=dispute)
        except SessionClosed:
            await self._mark_closed(session_id)
            raise
        await self._mark_closed(session_id, settled.tx)
        result = settled.to_json()
        log.info("session_closed", **result)
        return result

    async def _indexed_endpoint(self, provider: str) -> str:
        return self._endpoint(provider)

    async def _mark_closed(self, session_id: str, tx: str | None = None) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            session.status = LocalStatus.CLOSED
        await self.store.set_consumer_session_status(session_id, LocalStatus.CLOSED.value, tx)

    def ended(self, session: ConsumerSession) -> None:
        """The provider reports the session over (``SESSION_EXPIRED``, ``SESSION_CLOSED``:
        its clock or index ran ahead of ours). Never use it again and settle it now, with
        the provider's receipt: left open, its stake would stay in escrow and
        ``/blockchain/sessions`` would list it open for good. The sweeper retries a
        close that fails; one the provider already made only marks it closed."""
        if session.status is not LocalStatus.OPEN:
            return
        session.status = LocalStatus.CLOSING
        session.ended_by_provider = True
        task = asyncio.create_task(self._close_ended(session))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _close_ended(self, session: ConsumerSession) -> None:
        try:
            await self.store.set_consumer_session_status(session.session_id,
                                                         LocalStatus.CLOSING.value)
            await self.close(session.session_id)
        except SessionClosed:
            pass  # the provider settled it first: now marked closed
        except (ConsumerError, ChainError) as exc:
            log.warning("ended_session_close_failed", session=session.session_id,
                        error=str(exc))

    async def discard(self, session: ConsumerSession) -> None:
        """Stop using a failed provider's session and settle it as a dispute (refund the
        rest; the provider's share is held, and its stats gain no success)."""
        try:
            await self.close(session.session_id, dispute=True)
        except (ConsumerError, ChainError) as exc:
            log.warning("failover_close_failed", session=session.session_id, error=str(exc))


MAX_TURNS = 1024
"""Most prompts one session runs at once here, whatever its provider allows."""


def _prompt_limit(offered: object) -> int:
    """The provider's ``promptsPerSession`` (a peer's: checked), capped at ``MAX_TURNS``;
    1 when it gives none that makes sense. A large offer is capped, not taken for 1."""
    if isinstance(offered, int) and not isinstance(offered, bool) and offered >= 1:
        return min(offered, MAX_TURNS)
    return 1
