"""The consumer's sessions: pick a bid, get an approval, escrow MOR, settle.

Opening: rate the model's active bids, ask the best provider for an approval
over MOR-RPC (``session.request``), check it before paying gas, raise the MOR
allowance when needed and call ``openSession``; a provider that refuses or is
unreachable is skipped for the next-rated bid. Closing: fetch the provider's
signed receipt (``session.report``) and call ``closeSession``; when the
provider cannot be reached, close with our own signed receipt (a dispute) so
MOR is never stuck in escrow.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes

from proxy_router.chain.encoding import Approval, Receipt, recover_blob_signer, sign_blob
from proxy_router.chain.errors import ChainError, ContractReverted
from proxy_router.chain.index import MarketIndex
from proxy_router.chain.marketplace import Marketplace
from proxy_router.consumer.errors import ApiError
from proxy_router.consumer.rating import RatedBid, rate_bids
from proxy_router.rpc import RpcClient, RpcError, RpcPool, RpcUnavailable, SessionKey
from proxy_router.store.db import Store

log = structlog.get_logger(__name__)

# A session this close to its end is not used for a new prompt.
END_MARGIN_S = 15


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
    status: str = "open"
    prompt_limit: int = 1
    """Prompts the provider runs at once on this session (its ``promptsPerSession``)."""
    turns: asyncio.Semaphore = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.turns = asyncio.Semaphore(self.prompt_limit)

    def row(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "model_id": self.model_id,
                "bid_id": self.bid_id, "provider": self.provider, "endpoint": self.endpoint,
                "session_key": self.key.to_hex(), "stake": str(self.stake),
                "opened_at": self.opened_at, "ends_at": self.ends_at, "status": self.status}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ConsumerSession:
        return cls(session_id=row["session_id"], model_id=row["model_id"],
                   bid_id=row["bid_id"], provider=row["provider"], endpoint=row["endpoint"],
                   key=SessionKey.from_hex(row["session_key"]), stake=int(row["stake"]),
                   opened_at=int(row["opened_at"]), ends_at=int(row["ends_at"]),
                   status=row["status"])

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
    def __init__(self, *, account: LocalAccount, market: Marketplace, index: MarketIndex,
                 store: Store, pool: RpcPool, allowlist: set[str] | None = None,
                 idle_timeout_s: int = 0) -> None:
        self.account = account
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
        index.subscribe(self._on_event)

    async def load(self) -> None:
        """Rehydrate open sessions from the store, then reconcile with the chain."""
        now = time.time()
        for row in await self.store.consumer_sessions("open"):
            session = ConsumerSession.from_row(row)
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
        me = self.account.address
        offset, limit = 0, 200
        while True:
            ids, total = await self.market.client.call(
                self.market.contract, "getSessionsByUser", me, offset, limit)
            for raw in ids:
                session_id = "0x" + bytes(raw).hex()
                known = self.sessions.get(session_id)
                onchain = await self.market.get_session(session_id)
                if onchain["closed"]:
                    if known is not None and known.status == "open":
                        await self._mark_closed(session_id)
                elif known is None or known.status != "open":
                    log.warning("orphan_session_closing", session=session_id)
                    await self.close(session_id)
            offset += limit
            if offset >= int(total):
                break

    @property
    def open_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.status == "open")

    def touch(self, session_id: str) -> None:
        self.last_used[session_id] = time.time()

    async def sweep(self) -> None:
        """Close sessions whose time is up, idle past ``idle_timeout_s``, or dropped by
        failover whose close failed (e.g. the chain was down): retried every round, so
        the unused stake is refunded rather than left for the provider to close."""
        now_chain, now = self.chain_now(), time.time()
        for session in list(self.sessions.values()):
            if session.status not in ("open", "closing"):
                continue
            idle = now - self.last_used.get(session.session_id, now)
            if session.status == "closing":
                reason = "failover"
            elif now_chain >= session.ends_at:
                reason = "expired"
            elif self.idle_timeout_s and idle >= self.idle_timeout_s:
                reason = "idle"
            else:
                continue
            try:
                result = await self.close(session.session_id, dispute=reason == "failover")
                log.info("session_auto_closed", reason=reason, **result)
            except ApiError as exc:
                log.info("session_auto_close_skipped", session=session.session_id,
                         reason=exc.message)
            except ChainError as exc:
                log.warning("session_auto_close_failed", session=session.session_id,
                            error=str(exc))

    def chain_now(self) -> int:
        return max(int(time.time()), self.index.head_timestamp)

    async def _on_event(self, name: str, args: dict[str, Any]) -> None:
        """A session closed on chain by the provider is noticed here."""
        if name != "SessionClosed":
            return
        session = self.sessions.get(str(args["sessionId"]).lower())
        if session is not None and session.status == "open":
            session.status = "closed"
            await self.store.set_consumer_session_status(session.session_id, "closed")

    # -- rating ------------------------------------------------------------------

    async def rated_bids(self, model_id: str, exclude: set[str] = frozenset()  # type: ignore[assignment]
                         ) -> list[RatedBid]:
        bids = self.index.active_bids(model_id)
        providers = {b["provider"] for b in bids}
        stats: dict[str, dict[str, Any]] = {}
        for provider in providers:
            try:
                stats[provider.lower()] = await self.market.get_stats(provider, model_id)
            except ChainError:
                stats[provider.lower()] = {}
        return rate_bids(bids, stats, allowlist=self.allowlist,
                         exclude_provider=self.account.address, exclude_providers=exclude)

    # -- opening -----------------------------------------------------------------

    def current(self, model_id: str, exclude: set[str] = frozenset()  # type: ignore[assignment]
                ) -> ConsumerSession | None:
        """An open session for ``model_id`` with time left, the longest-lived first."""
        now = self.chain_now()
        usable = [s for s in self.sessions.values()
                  if s.status == "open" and s.model_id.lower() == model_id.lower()
                  and s.ends_at - now > END_MARGIN_S and s.provider.lower() not in exclude]
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
            return await self.open_for_model(model_id, duration, exclude)

    async def open_for_model(self, model_id: str, duration: int,
                             exclude: set[str] = frozenset()  # type: ignore[assignment]
                             ) -> ConsumerSession:
        rated = await self.rated_bids(model_id, exclude)
        if not rated:
            raise ApiError(503, "no_bids", f"no active bid for model {model_id} "
                           "(from an allowed provider)", type_="api_error")
        reasons = []
        for candidate in rated:
            try:
                return await self.open_for_bid(candidate.bid, duration)
            except (RpcError, RpcUnavailable) as exc:
                reasons.append(f"{candidate.bid['provider']}: {exc}")
                log.warning("provider_refused_session", provider=candidate.bid["provider"],
                            error=str(exc))
        raise ApiError(503, "no_provider_available",
                       "no provider could open a session: " + "; ".join(reasons),
                       type_="api_error")

    async def open_for_bid(self, bid: dict[str, Any], duration: int) -> ConsumerSession:
        bid_id = bid["id"]
        if bid.get("deletedAt"):
            raise ApiError(409, "bid_not_active", f"bid {bid_id} is not active")
        price = int(bid["pricePerSecond"])
        stake = price * duration
        balance = await self.market.mor_balance(self.account.address)
        if balance < stake:
            raise ApiError(402, "insufficient_mor",
                           f"a {duration}s session at {price} wei/s needs {stake} MOR wei; "
                           f"the wallet holds {balance}", type_="insufficient_funds")
        provider = bid["provider"]
        endpoint = self._endpoint(provider)
        client = self.pool.get(endpoint, provider)
        key = SessionKey.generate()
        reply = await client.call("session.request", {"bidId": bid_id,
                                                      "key": key.public_key_hex})
        approval, signature = self._check_approval(reply, bid_id, provider)
        try:
            session_id, tx = await self.market.open_session(stake, approval, signature)
        except ContractReverted as exc:
            raise ApiError(409, "open_session_reverted",
                           f"openSession reverted: {exc.reason}") from None
        onchain = await self.market.get_session(session_id)
        limit = reply.get("promptsPerSession", 1)
        session = ConsumerSession(
            session_id=session_id.lower(), model_id=bid["modelId"].lower(), bid_id=bid_id,
            provider=provider, endpoint=endpoint, key=key, stake=stake,
            opened_at=int(onchain["openedAt"]), ends_at=int(onchain["endsAt"]),
            prompt_limit=limit if isinstance(limit, int) and 1 <= limit <= 1024 else 1)
        await self.store.add_consumer_session(session.row())
        self.sessions[session.session_id] = session
        self.touch(session.session_id)
        log.info("session_opened", session=session.session_id, provider=provider,
                 stake=str(stake), gas=tx.gas_used)
        return session

    def _endpoint(self, provider: str) -> str:
        info = self.index.providers.get(provider) or next(
            (p for a, p in self.index.providers.items() if a.lower() == provider.lower()), None)
        if not info or not info.get("endpoint") or info.get("isDeleted"):
            raise RpcUnavailable(f"provider {provider} has no registered endpoint")
        return str(info["endpoint"])

    def _check_approval(self, reply: dict[str, Any], bid_id: str,
                        provider: str) -> tuple[bytes, bytes]:
        """Verify the approval before spending gas on a transaction that would revert."""
        try:
            approval = bytes(HexBytes(reply["approval"]))
            signature = bytes(HexBytes(reply["approvalSig"]))
            decoded = Approval.decode(approval)
            signer = recover_blob_signer(approval, signature)
        except (KeyError, ValueError, TypeError) as exc:
            raise RpcError("BAD_REQUEST", f"malformed approval: {exc}") from None
        if ("0x" + decoded.bid_id.hex()) != bid_id.lower():
            raise RpcError("BAD_REQUEST", "approval is for another bid")
        if decoded.user.lower() != self.account.address.lower():
            raise RpcError("BAD_REQUEST", "approval is for another user")
        if decoded.chain_id != self.market.client.chain_id:
            raise RpcError("BAD_REQUEST", "approval is for another chain")
        if signer.lower() != provider.lower():
            raise RpcError("BAD_SIGNATURE", "approval is not signed by the bid's provider")
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
            return await self._close(session_id, dispute)

    async def _close(self, session_id: str, dispute: bool = False) -> dict[str, Any]:
        session = self.sessions.get(session_id)
        onchain = await self.market.get_session(session_id)
        if not onchain["openedAt"]:
            raise ApiError(404, "session_not_found", f"session {session_id} not found")
        if onchain["user"].lower() != self.account.address.lower():
            raise ApiError(403, "not_session_user", "this session belongs to another user")
        if onchain["closed"]:
            await self._mark_closed(session_id)
            raise ApiError(409, "session_closed", f"session {session_id} is already closed")
        if dispute:
            receipt, signature = self._own_receipt(session_id)
        else:
            receipt, signature, _ = await self._receipt(session_id, session, onchain)
        tx = await self.market.close_session(receipt, signature)
        settled = tx.event("SessionSettled")
        await self._mark_closed(session_id, tx.tx_hash)
        result = {"sessionId": session_id, "tx": tx.tx_hash, "gasUsed": tx.gas_used,
                  "gasCostWei": str(tx.fee_wei), "stake": str(onchain["stake"]),
                  "providerEarned": str(settled["providerEarned"]),
                  "userRefund": str(settled["userRefund"]), "held": str(settled["held"]),
                  "disputed": bool(settled["disputed"])}
        log.info("session_closed", **result)
        return result

    async def _receipt(self, sid: str, session: ConsumerSession | None,
                       onchain: dict[str, Any]) -> tuple[bytes, bytes, bool]:
        """The provider's signed receipt, or our own (a dispute) when it cannot be had."""
        try:
            client = self._client_for(session, onchain)
            reply = await client.call("session.report", {"sessionId": sid},
                                      first_frame_timeout=10)
            receipt = bytes(HexBytes(reply["receipt"]))
            signature = bytes(HexBytes(reply["signature"]))
            decoded = Receipt.decode(receipt)
            if ("0x" + decoded.session_id.hex()) != sid or \
                    recover_blob_signer(receipt, signature).lower() != \
                    onchain["provider"].lower():
                raise RpcError("BAD_SIGNATURE", "provider receipt does not match the session")
            return receipt, signature, False
        except (RpcError, RpcUnavailable, KeyError, ValueError) as exc:
            log.warning("receipt_unavailable_disputing", session=sid, error=str(exc))
        return (*self._own_receipt(sid), True)

    def _own_receipt(self, sid: str) -> tuple[bytes, bytes]:
        """A receipt signed by us (a dispute: the provider's share is held, no success)."""
        own = Receipt(bytes.fromhex(sid[2:]), self.market.client.chain_id,
                      self.chain_now()).encode()
        return own, sign_blob(self.account, own)

    def _client_for(self, session: ConsumerSession | None,
                    onchain: dict[str, Any]) -> RpcClient:
        provider = onchain["provider"]
        endpoint = session.endpoint if session else self._endpoint(provider)
        return self.pool.get(endpoint, provider)

    async def _mark_closed(self, session_id: str, tx: str | None = None) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            session.status = "closed"
        await self.store.set_consumer_session_status(session_id, "closed", tx)

    async def discard(self, session: ConsumerSession) -> None:
        """Stop using a failed provider's session and settle it as a dispute (refund the
        rest; the provider's share is held, and its stats gain no success)."""
        try:
            await self.close(session.session_id, dispute=True)
        except (ApiError, ChainError) as exc:
            log.warning("failover_close_failed", session=session.session_id, error=str(exc))
