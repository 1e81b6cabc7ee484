"""The provider proxy-router: MOR-RPC methods on top of chain, capacity and backends.

``session.request`` signs approvals against per-model capacity,
``session.prompt`` runs every check of DESIGN.md §3 and streams the backend's
chunks (encrypted by the transport), ``session.report`` signs the receipt the
user settles with, ``provider.capabilities`` describes this node.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import structlog
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from proxy_router import __version__
from proxy_router.chain.encoding import Approval, Receipt, sign_blob
from proxy_router.chain.errors import ChainError
from proxy_router.chain.index import MarketIndex
from proxy_router.chain.marketplace import Marketplace, to_bytes32
from proxy_router.metrics import Metrics
from proxy_router.provider.backend import (
    BackendError,
    BackendFailure,
    BackendTimeouts,
    BackendUnavailable,
    OpenAIBackend,
    UsageMeter,
    estimate_prompt_tokens,
)
from proxy_router.provider.capacity import APPROVAL_TTL_SECONDS, CapacityManager, NoCapacity
from proxy_router.provider.hardware import detect_hardware
from proxy_router.provider.models_config import ModelsConfig, normalize_model_id
from proxy_router.rpc import ErrorCode, RequestContext, RpcError, RpcServer
from proxy_router.rpc.protocol import SSE_FORMAT
from proxy_router.store.db import Store

log = structlog.get_logger(__name__)


def _param(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise RpcError(ErrorCode.BAD_REQUEST, f"params.{name} must be a non-empty string")
    return value


def _bytes32(params: dict[str, Any], name: str) -> str:
    value = _param(params, name).lower()
    try:
        to_bytes32(value)
    except ValueError:
        raise RpcError(ErrorCode.BAD_REQUEST, f"params.{name} must be a 0x 32-byte id") from None
    return value


class ProviderNode:
    def __init__(self, *, account: LocalAccount, market: Marketplace, index: MarketIndex,
                 models: ModelsConfig, backend_urls: dict[str, str], store: Store,
                 http: aiohttp.ClientSession, backend_timeouts: BackendTimeouts | None = None,
                 capacity: CapacityManager | None = None, close_grace_s: int = 60,
                 metrics: Metrics | None = None) -> None:
        self.account = account
        self.address = account.address
        self.market = market
        self.index = index
        self.models = models
        self.store = store
        self.capacity = capacity or CapacityManager(models.slots_by_model())
        self.backends = {
            normalize_model_id(m.model_id): OpenAIBackend(
                backend_urls[normalize_model_id(m.model_id)], model_name=m.model_name,
                session=http, api_key=m.api_key, timeouts=backend_timeouts)
            for m in models.models
        }
        self.close_grace_s = close_grace_s
        self.metrics = metrics or Metrics("provider")
        self._http = http
        self._sessions: dict[str, dict[str, Any]] = {}
        self._issued: dict[tuple[str, str], set[int]] = {}
        index.subscribe(self._on_event)

    # -- wiring ----------------------------------------------------------------

    def register(self, server: RpcServer) -> None:
        server.method("session.request")(self.session_request)
        server.method("session.prompt", stream=True)(self.session_prompt)
        server.method("session.report")(self.session_report)
        server.method("provider.capabilities")(self.capabilities)

    def chain_now(self) -> int:
        """Chain time: wall clock, or the newest block's timestamp when that is ahead."""
        return max(int(time.time()), self.index.head_timestamp)

    @property
    def open_sessions(self) -> int:
        """Sessions with this provider that the index knows open (read at scrape time)."""
        me = self.address.lower()
        return sum(1 for s in self.index.sessions.values()
                   if not s.get("closed") and str(s.get("provider", "")).lower() == me)

    async def _on_event(self, name: str, args: dict[str, Any]) -> None:
        if str(args.get("provider", "")).lower() != self.address.lower():
            return
        session_id = str(args.get("sessionId", "")).lower()
        if name == "SessionOpened":
            session = self.index.sessions.get(session_id)
            if session:
                self.capacity.track_session(session_id, session["modelId"],
                                            float(session["endsAt"]))
        elif name == "SessionClosed":
            self.capacity.release_session(session_id)
            self._sessions.pop(session_id, None)

    # -- session.request --------------------------------------------------------

    async def session_request(self, params: dict[str, Any], ctx: RequestContext
                              ) -> dict[str, Any]:
        bid_id = _bytes32(params, "bidId")
        bid = await self._read(self.market.get_bid(bid_id))
        if not bid["createdAt"] or bid["deletedAt"]:
            raise RpcError(ErrorCode.BID_NOT_FOUND, f"bid {bid_id} is not active")
        if bid["provider"].lower() != self.address.lower():
            raise RpcError(ErrorCode.WRONG_PROVIDER, f"bid {bid_id} belongs to {bid['provider']}")
        model_id = normalize_model_id(bid["modelId"])
        if model_id not in self.backends:
            raise RpcError(ErrorCode.MODEL_NOT_SERVED, f"model {model_id} is not served here")
        if ctx.sender.lower() == self.address.lower():
            raise RpcError(ErrorCode.BAD_REQUEST, "a provider cannot open a session on itself")
        approval = Approval(bytes.fromhex(bid_id[2:]), self.market.client.chain_id,
                            to_checksum_address(ctx.sender),
                            self._approval_time(ctx.sender, bid_id)).encode()
        try:
            self.capacity.reserve_approval(model_id, "0x" + keccak(approval).hex())
        except NoCapacity as exc:
            raise RpcError(ErrorCode.NO_CAPACITY, str(exc)) from None
        log.info("approval_signed", bid=bid_id, user=ctx.sender)
        return {"approval": "0x" + approval.hex(),
                "approvalSig": "0x" + sign_blob(self.account, approval).hex(),
                "bidId": bid_id, "modelId": model_id,
                "pricePerSecond": str(bid["pricePerSecond"])}

    def _approval_time(self, user: str, bid_id: str) -> int:
        """A timestamp never issued before for (user, bid).

        An approval has no nonce: two for the same user and bid in the same second
        would be byte-identical, and the contract accepts an approval once. Stepping
        back a second keeps it valid (the TTL is minutes) and unique.
        """
        now = self.chain_now()
        issued = self._issued.setdefault((user.lower(), bid_id), set())
        issued.difference_update({t for t in issued if t < now - APPROVAL_TTL_SECONDS})
        stamp = now
        while stamp in issued:
            stamp -= 1
        issued.add(stamp)
        return stamp

    # -- session.prompt ---------------------------------------------------------

    async def session_prompt(self, params: dict[str, Any], ctx: RequestContext
                             ) -> AsyncIterator[bytes | dict[str, Any]]:
        session_id = _bytes32(params, "sessionId")
        session = await self._check_session(session_id, ctx.sender)
        model_id = normalize_model_id(session["modelId"])
        backend = self.backends.get(model_id)
        if backend is None:
            raise RpcError(ErrorCode.MODEL_NOT_SERVED, f"model {model_id} is not served here")
        ctx.use_peer_key(_param(params, "key"))
        try:
            body = json.loads(ctx.open_payload())
        except RpcError:
            raise
        except ValueError:
            raise RpcError(ErrorCode.BAD_REQUEST, "payload is not a JSON object") from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise RpcError(ErrorCode.BAD_REQUEST, "payload must be a chat request with messages")
        meter = UsageMeter(prompt_tokens_estimate=estimate_prompt_tokens(body))
        try:
            async with self.capacity.prompt_slot(model_id):
                async for item in _generate(backend, body, meter,
                                            sse=params.get("format") == SSE_FORMAT):
                    yield item
        except NoCapacity as exc:
            raise RpcError(ErrorCode.NO_CAPACITY, str(exc)) from None
        usage = meter.result()
        ctx.trailer["usage"] = {"prompt_tokens": usage.prompt_tokens,
                                "completion_tokens": usage.completion_tokens,
                                "ttft_ms": usage.ttft_ms, "tps_x1000": usage.tps_x1000}
        self.metrics.observe_answer(backend.model_name, usage=ctx.trailer["usage"],
                                    ttft_s=usage.ttft_ms / 1000 if body.get("stream", True)
                                    else None)
        await self.store.record_usage(session_id, usage.prompt_tokens, usage.completion_tokens,
                                      usage.ttft_ms, usage.tps_x1000)

    async def _check_session(self, session_id: str, sender: str) -> dict[str, Any]:
        """Every per-prompt check of DESIGN.md §3, each with its own error code."""
        session = self._sessions.get(session_id)
        if session is None:
            session = await self._read(self.market.get_session(session_id))
            if not session["openedAt"]:
                raise RpcError(ErrorCode.SESSION_NOT_FOUND, f"session {session_id} not found")
            if session["provider"].lower() == self.address.lower():
                # Only our own sessions are cached: their SessionClosed event evicts them,
                # so probing other providers' session ids cannot grow the cache.
                self._sessions[session_id] = session
        indexed = self.index.sessions.get(session_id)
        if session["closed"] or (indexed and indexed.get("closed")):
            raise RpcError(ErrorCode.SESSION_CLOSED, f"session {session_id} is closed")
        if session["provider"].lower() != self.address.lower():
            raise RpcError(ErrorCode.WRONG_PROVIDER,
                           f"session {session_id} is with provider {session['provider']}")
        if session["user"].lower() != sender.lower():
            raise RpcError(ErrorCode.NOT_SESSION_USER,
                           f"session {session_id} belongs to another user")
        if self.chain_now() >= int(session["endsAt"]):
            raise RpcError(ErrorCode.SESSION_EXPIRED, f"session {session_id} has ended")
        return session

    # -- session.report ---------------------------------------------------------

    async def session_report(self, params: dict[str, Any], ctx: RequestContext
                             ) -> dict[str, Any]:
        session_id = _bytes32(params, "sessionId")
        session = self._sessions.get(session_id) or await self._read(
            self.market.get_session(session_id))
        if not session["openedAt"]:
            raise RpcError(ErrorCode.SESSION_NOT_FOUND, f"session {session_id} not found")
        if session["provider"].lower() != self.address.lower():
            raise RpcError(ErrorCode.WRONG_PROVIDER, "session is with another provider")
        if session["user"].lower() != ctx.sender.lower():
            raise RpcError(ErrorCode.NOT_SESSION_USER, "session belongs to another user")
        receipt, signature, usage = await self._signed_receipt(session_id)
        return {"receipt": "0x" + receipt.hex(), "signature": "0x" + signature.hex(),
                "usage": usage}

    async def _signed_receipt(self, session_id: str) -> tuple[bytes, bytes, dict[str, int]]:
        """The receipt for ``closeSession``: this session's measured usage, signed."""
        usage = await self.store.usage(session_id)
        prompts = max(1, usage["prompts"])
        receipt = Receipt(
            session_id=bytes.fromhex(session_id[2:]),
            chain_id=self.market.client.chain_id,
            timestamp=self.chain_now(),
            tps_x1000=usage["tps_x1000_sum"] // prompts,
            ttft_ms=usage["ttft_ms_sum"] // prompts,
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
        ).encode()
        return receipt, sign_blob(self.account, receipt), usage

    # -- settlement of what we are owed ----------------------------------------

    async def sweep(self) -> None:
        """Close our sessions their users left open past the grace period (we are paid
        for the full duration), and claim disputed shares once they are released."""
        now = self.chain_now()
        me = self.address.lower()
        for session_id, session in list(self.index.sessions.items()):
            if str(session.get("provider", "")).lower() != me:
                continue
            try:
                if not session["closed"] and now >= int(session["endsAt"]) + self.close_grace_s:
                    receipt, signature, _ = await self._signed_receipt(session_id)
                    tx = await self.market.close_session(receipt, signature)
                    log.info("expired_session_closed", session=session_id, tx=tx.tx_hash,
                             earned=str(tx.event("SessionSettled")["providerEarned"]))
                elif (session["closed"] and session["held"] and not session["claimed"]
                      and now >= int(session["releaseAt"])):
                    tx = await self.market.claim_for_provider(session_id)
                    log.info("disputed_share_claimed", session=session_id, tx=tx.tx_hash,
                             amount=str(tx.event("ProviderClaimed")["amount"]))
            except ChainError as exc:
                # Reverts here mean the user settled first: the index catches up.
                log.info("provider_settlement_skipped", session=session_id, error=str(exc))

    # -- health -----------------------------------------------------------------

    async def backend_health(self) -> dict[str, dict[str, Any]]:
        """One component per model: does its backend answer ``GET /models``?"""
        out: dict[str, dict[str, Any]] = {}
        for model_id, backend in self.backends.items():
            name = f"backend:{backend.model_name}"
            try:
                async with self._http.get(backend.base_url + "/models",
                                          timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    out[name] = {"ok": resp.status == 200, "modelId": model_id,
                                 "error": None if resp.status == 200 else f"HTTP {resp.status}"}
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                out[name] = {"ok": False, "modelId": model_id,
                             "error": f"{type(exc).__name__}: {exc}"}
        return out

    # -- provider.capabilities ---------------------------------------------------

    async def capabilities(self, params: dict[str, Any], ctx: RequestContext
                           ) -> dict[str, Any]:
        snapshot = self.capacity.snapshot()
        return {
            "version": __version__,
            "address": self.address,
            "hardware": _integers_only(detect_hardware()),
            "models": [
                {"modelId": normalize_model_id(m.model_id), "modelName": m.model_name,
                 "slots": m.concurrent_slots,
                 "capacity": snapshot.get(normalize_model_id(m.model_id), {})}
                for m in self.models.models
            ],
        }

    @staticmethod
    async def _read(awaitable: Any) -> dict[str, Any]:
        try:
            return dict(await awaitable)
        except ChainError as exc:
            raise RpcError(ErrorCode.INTERNAL, f"chain unavailable: {exc}") from None


async def _generate(backend: OpenAIBackend, body: dict[str, Any], meter: UsageMeter, *,
                    sse: bool = False) -> AsyncIterator[bytes | dict[str, Any]]:
    """Backend chunks (or one whole reply), measured, with failures as RPC errors.

    A stream is forwarded without a JSON round trip: with ``sse`` (the consumer asked
    for ``format: "sse"``) each stream chunk is ready-to-write SSE bytes holding every
    event one backend read brought (``data: {…}`` and a blank line each); without it, each is
    one event's JSON, as older consumers expect. A non-stream reply is one JSON chunk.
    """
    try:
        if body.get("stream", True):
            async with contextlib.aclosing(backend.stream_events(body, meter)) as batches:
                async for batch in batches:
                    if sse:
                        yield b"data: " + b"\n\ndata: ".join(batch) + b"\n\n"
                    else:
                        for payload in batch:
                            yield payload
        else:
            response = await backend.complete_chat(body)
            meter.observe_response(response)
            yield response
    except BackendUnavailable as exc:
        raise RpcError(ErrorCode.BACKEND_UNAVAILABLE, exc.reason) from None
    except BackendError as exc:
        raise RpcError(ErrorCode.BACKEND_ERROR, exc.message, {"status": exc.status}) from None
    except BackendFailure as exc:
        raise RpcError(ErrorCode.BACKEND_ERROR, str(exc)) from None


def _integers_only(value: Any) -> Any:
    """Signed frames are canonical JSON (no floats): render floats as strings."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return {k: _integers_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integers_only(v) for v in value]
    return value
