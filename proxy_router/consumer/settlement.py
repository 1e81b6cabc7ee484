"""Settling a session as its user: the provider's signed receipt, else our own.

``Settler.settle`` asks the provider for its signed receipt over MOR-RPC
(``session.report``), checks that it is for this session and signed by the
session's provider, and calls ``closeSession``. When the provider cannot be
reached or answers with anything unusable, it closes with a receipt signed by
us instead: a dispute (the refund is paid at once, the provider's share is held
for the dispute window), so MOR is never stuck in escrow.

It needs only the Marketplace, an ``RpcPool`` and the user's account: the
consumer's ``SessionManager`` and the operator CLI (``proxy-router session
close``) both settle through it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes

from proxy_router.chain.encoding import Receipt, recover_blob_signer, sign_blob
from proxy_router.chain.markets import Market
from proxy_router.chain.types import Session, chain_now, same_address
from proxy_router.consumer.domain_errors import NotSessionUser, SessionClosed, SessionNotFound
from proxy_router.consumer.links import LinkPool
from proxy_router.morrpc import ErrorCode, RpcError, RpcUnavailable

log = structlog.get_logger(__name__)

REPORT_TIMEOUT_S = 10
"""How long the provider has to answer ``session.report``."""

EndpointOf = Callable[[str], Awaitable[str]]
"""A provider's MOR-RPC ``host:port`` by address; ``RpcUnavailable`` when it has none."""


@dataclass(frozen=True, slots=True)
class Settlement:
    """A session closed on chain: ``stake == provider_earned + user_refund``; ``held`` is
    the part of ``provider_earned`` kept for the dispute window."""

    session_id: str
    tx: str
    gas_used: int
    gas_cost_wei: int
    stake: int
    provider_earned: int
    user_refund: int
    held: int
    disputed: bool
    receipt_error: str | None = None
    """Why the provider's receipt was not used (None: it was, or a dispute was asked for)."""

    def to_json(self) -> dict[str, Any]:
        """The API's ``Settlement`` (wei as decimal strings)."""
        return {"sessionId": self.session_id, "tx": self.tx, "gasUsed": self.gas_used,
                "gasCostWei": str(self.gas_cost_wei), "stake": str(self.stake),
                "providerEarned": str(self.provider_earned),
                "userRefund": str(self.user_refund), "held": str(self.held),
                "disputed": self.disputed}


class Settler:
    """Closes the sessions of ``account`` (their user) on ``market``."""

    def __init__(self, market: Market, pool: LinkPool, account: LocalAccount, *,
                 clock: Callable[[], int] = chain_now,
                 endpoint_of: EndpointOf | None = None) -> None:
        self.market = market
        self.pool = pool
        self.account = account
        self.clock = clock
        """The chain's "now", the timestamp of a receipt we sign ourselves."""
        self.endpoint_of = endpoint_of or self._registered_endpoint

    async def chain_session(self, session_id: str) -> Session:
        """The session as the contract sees it; ``SessionNotFound`` if there is none."""
        onchain = await self.market.get_session(session_id)
        if not onchain.exists:
            raise SessionNotFound(f"session {session_id} not found")
        return onchain

    async def settle(self, session_id: str, *, endpoint: str | None = None,
                     dispute: bool = False) -> Settlement:
        """Close the session; ``endpoint`` is where its provider was reached (default: as
        ``endpoint_of`` says). ``dispute`` closes with our own receipt without asking:
        for a session abandoned because the provider failed."""
        onchain = await self.chain_session(session_id)
        session_id = onchain.id  # 0x + 64 lower-case hex digits
        if not same_address(onchain.user, self.account.address):
            raise NotSessionUser("this session belongs to another user")
        if onchain.closed:
            raise SessionClosed(f"session {session_id} is already closed")
        problem: str | None = None
        if dispute:
            receipt, signature = self.own_receipt(session_id)
        else:
            receipt, signature, problem = await self.receipt(onchain, endpoint)
        tx = await self.market.close_session(receipt, signature)
        settled = await self.market.settled(tx, onchain)
        return Settlement(session_id=session_id, tx=tx.tx_hash, gas_used=tx.gas_used,
                          gas_cost_wei=tx.fee_wei, stake=onchain.stake,
                          provider_earned=settled.provider_earned,
                          user_refund=settled.user_refund, held=settled.held,
                          disputed=settled.disputed, receipt_error=problem)

    async def receipt(self, onchain: Session, endpoint: str | None = None
                      ) -> tuple[bytes, bytes, str | None]:
        """(receipt, signature, None) from the provider, or our own receipt and why the
        provider's could not be had (closing with it is a dispute)."""
        sid = onchain.id
        try:
            where = endpoint or await self.endpoint_of(onchain.provider)
            client = self.pool.get(where, onchain.provider)
            reply = await client.call("session.report", {"sessionId": sid},
                                      first_frame_timeout=REPORT_TIMEOUT_S)
            receipt = bytes(HexBytes(reply["receipt"]))
            signature = bytes(HexBytes(reply["signature"]))
            decoded = Receipt.decode(receipt)
            if ("0x" + decoded.session_id.hex()) != sid or not same_address(
                    recover_blob_signer(receipt, signature), onchain.provider):
                raise RpcError(ErrorCode.BAD_SIGNATURE,
                               "provider receipt does not match the session")
            return receipt, signature, None
        except (RpcError, RpcUnavailable, KeyError, ValueError) as exc:
            problem = str(exc) or type(exc).__name__
            log.warning("receipt_unavailable_disputing", session=sid, error=problem)
        return (*self.own_receipt(sid), problem)

    def own_receipt(self, session_id: str) -> tuple[bytes, bytes]:
        """A receipt signed by us (a dispute: the provider's share is held, no success)."""
        own = Receipt(bytes.fromhex(session_id[2:]), self.market.client.chain_id,
                      self.clock()).encode()
        return own, sign_blob(self.account, own)

    async def _registered_endpoint(self, provider: str) -> str:
        """The endpoint the provider registered on chain (when no index is at hand)."""
        info = await self.market.get_provider(provider)
        if not info.endpoint or info.is_deleted:
            raise RpcUnavailable(f"provider {provider} has no registered endpoint")
        return info.endpoint
