"""The provider proxy-router: MOR-RPC methods on top of chain, capacity and backends.

``session.request`` signs approvals, ``session.prompt`` runs every check of
DESIGN.md §3 and streams the backend's chunks (encrypted by the transport),
``session.report`` signs the receipt the user settles with,
``provider.capabilities`` describes this provider.

Each of the three has a wire-free core (``approve``, ``prompt``, ``report``: bid id or
session id, the authenticated user's address, a decoded body) that both wires call:
our ``mor-rpc/1`` handlers here, and the reference's raw-TCP wire (``lumerin_wire``),
so every check, slot and meter is the same whichever wire a consumer speaks.

An approval must cost its asker something real before it costs us anything: it is
signed only for a requester holding the MOR for the bid's shortest session and ETH
for the gas, while this requester's unused approvals are under the cap, a slot is
free and the model's backend answers. Every refusal is decided before any state is
written. Peers get stable codes and generic messages; details (URLs, paths,
backend texts) go to the log, redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import aiohttp
import structlog
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from proxy_router import __version__, bounded_json
from proxy_router.chain.client import ChainClient
from proxy_router.chain.encoding import Approval, Receipt, sign_blob
from proxy_router.chain.errors import ChainError
from proxy_router.chain.events import REORG, MarketEvent
from proxy_router.chain.flavor import to_bytes32
from proxy_router.chain.index import MarketIndex
from proxy_router.chain.markets import Market
from proxy_router.chain.morpheus import MorpheusMarketplace
from proxy_router.chain.types import Bid, Session, SessionStatus, same_address
from proxy_router.metrics import Metrics
from proxy_router.morrpc import ErrorCode, RequestContext, RpcError, RpcServer
from proxy_router.morrpc.protocol import MAX_FRAME_BYTES, PROMPT_APIS, SSE_FORMAT, PromptApi
from proxy_router.provider.approvals import ApprovalLedger, TooManyApprovals
from proxy_router.provider.backend import (
    BackendError,
    BackendFailure,
    BackendTimeouts,
    BackendUnavailable,
    OpenAIBackend,
)
from proxy_router.provider.backend_health import BackendMonitor
from proxy_router.provider.backend_pool import BackendPool, PromptBackend
from proxy_router.provider.capacity import (
    QUEUE_DEPTH,
    QUEUE_WAIT_S,
    CapacityManager,
    NoCapacity,
    QueueOutcome,
    SessionBusy,
)
from proxy_router.provider.choices import serve_choices
from proxy_router.provider.hardware import detect_hardware
from proxy_router.provider.models_config import ModelConfig, ModelsConfig, normalize_model_id
from proxy_router.provider.normalize import (
    normalize_chat,
    normalize_completion,
    normalize_embedding,
)
from proxy_router.provider.usage import MeterSum, UsageMeter, estimate_prompt_tokens
from proxy_router.ratelimit import RateLimiter
from proxy_router.store.db import Store

log = structlog.get_logger(__name__)

MIN_SESSION_SECONDS = 300
"""The contract's shortest session: the least a requester must be able to pay for."""
OPEN_SESSION_GAS = 250_000
"""Gas of ``openSession`` plus a MOR ``approve``, which the requester must afford."""
_GAS_PRICE_TTL_S = 30.0
_T = TypeVar("_T")

PromptItem = list[bytes] | dict[str, Any]
"""What ``ProviderService.prompt`` yields: a stream's raw event payloads (the JSON of each
``chat.completion.chunk`` one backend read brought), or a whole ``chat.completion``."""


@dataclass(frozen=True, slots=True)
class SignedApproval:
    """An approval ``openSession`` takes (timestamp in seconds) and our EIP-191 signature."""

    approval: bytes
    signature: bytes
    bid_id: str
    model_id: str
    price_per_second: int


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


def _check_format(params: dict[str, Any]) -> None:
    """Stream chunks are ready-to-write SSE bytes, the one chunk format of MOR-RPC v1."""
    fmt = params.get("format")
    if fmt is not None and fmt != SSE_FORMAT:
        raise RpcError(ErrorCode.BAD_REQUEST, f'params.format must be "{SSE_FORMAT}"')


def _chat_body(ctx: RequestContext) -> dict[str, Any]:
    """The sealed prompt, opened (``prompt`` checks it is a chat request)."""
    try:
        body = bounded_json.loads(ctx.open_payload(), max_bytes=MAX_FRAME_BYTES)
    except RpcError:
        raise
    except ValueError:
        raise RpcError(ErrorCode.BAD_REQUEST, "payload is not a JSON object") from None
    if not isinstance(body, dict):
        raise RpcError(ErrorCode.BAD_REQUEST, "payload is not a JSON object")
    return body


def _api(params: dict[str, Any]) -> PromptApi:
    """What the prompt asks: ``chat`` unless ``params.api`` says otherwise."""
    api = params.get("api", "chat")
    if api not in PROMPT_APIS:
        raise RpcError(ErrorCode.BAD_REQUEST, f"params.api must be one of "
                       f"{', '.join(PROMPT_APIS)}")
    return cast(PromptApi, api)


_NEEDS: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "chat": ("messages", list), "completions": ("prompt", (str, list)),
    "embeddings": ("input", (str, list))}
_NORMALIZE = {"chat": normalize_chat, "completions": normalize_completion,
              "embeddings": normalize_embedding}


def _check_body(body: Any, api: PromptApi) -> None:
    key, kind = _NEEDS[api]
    if not isinstance(body, dict) or not isinstance(body.get(key), kind):
        raise RpcError(ErrorCode.BAD_REQUEST, f"payload must be a {api} request with {key}")


class ProviderService:
    """The provider's MOR-RPC handlers, its capacity and approval bookkeeping, and the
    settlement of sessions its users left open."""

    def __init__(self, *, account: LocalAccount, market: Market, index: MarketIndex,
                 models: ModelsConfig, backend_urls: Mapping[str, str | Sequence[str]],
                 store: Store,
                 http: aiohttp.ClientSession, backend_timeouts: BackendTimeouts | None = None,
                 capacity: CapacityManager | None = None, close_grace_s: int = 60,
                 metrics: Metrics | None = None, prompts_per_session: int = 1,
                 approvals_per_user: int = 3,
                 session_requests_per_ip_s: float = 20.0,
                 prompt_queue_depth: int = QUEUE_DEPTH,
                 prompt_queue_wait_s: float = QUEUE_WAIT_S) -> None:
        self.account = account
        self.address = account.address
        self.market = market
        self.index = index
        self.models = models
        self.store = store
        self.metrics = metrics or Metrics("provider")
        self.capacity = capacity or CapacityManager(
            models.slots_by_model(), prompts_per_session=prompts_per_session,
            queue_depth=prompt_queue_depth, queue_wait_s=prompt_queue_wait_s,
            observer=_QueueMetrics(self.metrics, {normalize_model_id(m.model_id): m.model_name
                                                  for m in models.models}))
        self.approvals = ApprovalLedger(per_user=approvals_per_user)
        self.request_rate = RateLimiter(session_requests_per_ip_s,
                                        burst=max(1.0, 2 * session_requests_per_ip_s))
        self.backends = {
            normalize_model_id(m.model_id): self._pool(
                m, backend_urls[normalize_model_id(m.model_id)], http, backend_timeouts)
            for m in models.models
        }
        """A pool of backends per model id (one per ``apiUrl``; one for a gguf model)."""
        self.health = BackendMonitor(self.backends, http)
        self.close_grace_s = close_grace_s
        self._http = http
        self._sessions: dict[str, Session] = {}
        self._claimed: set[str] = set()  # Morpheus sessions claimed (no event tells)
        """Our own open sessions as read from the chain (evicted at close or end)."""
        self._gas_price: tuple[float, int] = (0.0, 0)
        index.subscribe(self._on_event)

    def _pool(self, model: ModelConfig, urls: str | Sequence[str],
              http: aiohttp.ClientSession, timeouts: BackendTimeouts | None) -> BackendPool:
        on_abort = functools.partial(self.metrics.backend_aborted, model.model_name)
        backends = [OpenAIBackend(url, model_name=model.model_name, session=http,
                                  api_key=model.api_key, timeouts=timeouts, on_abort=on_abort)
                    for url in ([urls] if isinstance(urls, str) else urls)]
        return BackendPool(normalize_model_id(model.model_id), model.model_name, backends,
                           slots=model.concurrent_slots, metrics=self.metrics)

    async def close(self) -> None:
        """Stop the backends' recovery probes."""
        await self.health.close()

    # -- wiring ----------------------------------------------------------------

    def register(self, server: RpcServer) -> None:
        server.method("session.request")(self.session_request)
        server.method("session.prompt", stream=True)(self.session_prompt)
        server.method("session.report")(self.session_report)
        server.method("provider.capabilities")(self.capabilities)

    def _is_ours(self, address: str | None) -> bool:
        return same_address(address, self.address)

    @property
    def open_sessions(self) -> int:
        """Sessions with this provider that the index knows open (read at scrape time)."""
        return sum(1 for s in self.index.sessions.values()
                   if not s.closed and self._is_ours(s.provider))

    def rebuild_capacity(self) -> int:
        """Count our sessions the index knows open (after a restart); returns how many."""
        now = self.index.chain_now()
        n = 0
        for session_id, session in self.index.sessions.items():
            if (self._is_ours(session.provider) and session.status(now) is SessionStatus.OPEN
                    and self.capacity.serves(session.model_id)):
                self.capacity.track_session(session_id, session.model_id,
                                            float(session.ends_at))
                n += 1
        log.info("capacity_rebuilt", open_sessions=n)
        return n

    async def _on_event(self, event: MarketEvent) -> None:
        if event.name == REORG:  # sessions read before the fork may be gone: read again
            self._sessions.clear()
            return
        session_id = event.session_id
        if session_id is None or not self._is_ours(event.provider):
            return
        if event.name == "SessionOpened":
            self.approvals.consume(session_id)
            session = self.index.sessions.get(session_id)
            if session is not None and self.capacity.serves(session.model_id):
                self.capacity.track_session(session_id, session.model_id,
                                            float(session.ends_at))
        elif event.name == "SessionClosed":
            self.capacity.release_session(session_id)
            self._sessions.pop(session_id, None)

    # -- session.request --------------------------------------------------------

    async def session_request(self, params: dict[str, Any], ctx: RequestContext
                              ) -> dict[str, Any]:
        grant = await self.approve(_bytes32(params, "bidId"), ctx.sender, remote=ctx.remote)
        return {"approval": "0x" + grant.approval.hex(),
                "approvalSig": "0x" + grant.signature.hex(),
                "bidId": grant.bid_id, "modelId": grant.model_id,
                "pricePerSecond": str(grant.price_per_second),
                "promptsPerSession": self.capacity.prompts_per_session}

    async def approve(self, bid_id: str, user: str, *, remote: str | None) -> SignedApproval:
        """An approval for ``user`` (authenticated by the caller) on ``bid_id`` (lower-case
        0x 32-byte id), after every check; ``remote`` (the peer's IP) is rate limited."""
        if not self.request_rate.allow(remote or "?"):
            raise RpcError(ErrorCode.RATE_LIMITED, "too many session requests from this address")
        user = to_checksum_address(user)
        if self._is_ours(user):
            raise RpcError(ErrorCode.BAD_REQUEST, "a provider cannot open a session on itself")
        await self._forget_opened_approvals(user)
        self._check_approval_cap(user)
        bid = self.index.bids.get(bid_id)
        if bid is None:
            bid = await self._read(self.market.get_bid(bid_id))
        model_id = await self._check_bid(bid)
        await self._check_funds(user, bid.price_per_second)
        self._check_approval_cap(user)  # again: other requests of this user ran meanwhile
        approval, signature = self._sign_approval(user, bid_id)
        log.info("approval_signed", bid=bid_id, user=user)
        return SignedApproval(approval, signature, bid_id, model_id, bid.price_per_second)

    async def _check_bid(self, bid: Bid) -> str:
        """The bid is active, ours, for a model served here with a free slot and a backend
        that answers; returns its model id."""
        if not bid.active:
            raise RpcError(ErrorCode.BID_NOT_FOUND, f"bid {bid.id} is not active")
        if not self._is_ours(bid.provider):
            raise RpcError(ErrorCode.WRONG_PROVIDER, f"bid {bid.id} belongs to {bid.provider}")
        model_id = normalize_model_id(bid.model_id)
        if model_id not in self.backends:
            raise RpcError(ErrorCode.MODEL_NOT_SERVED, f"model {model_id} is not served here")
        try:
            self.capacity.check_approve(model_id)
        except NoCapacity as exc:
            raise RpcError(ErrorCode.NO_CAPACITY, str(exc)) from None
        if not await self.health.is_up(model_id):
            raise RpcError(ErrorCode.BACKEND_UNAVAILABLE,
                           "the model server for this bid is down; try another provider")
        return model_id

    def _sign_approval(self, user: str, bid_id: str) -> tuple[bytes, bytes]:
        """The approval ``openSession`` takes and our signature, recorded in the ledger
        under the id of the session it will open."""
        stamp = self.approvals.timestamp_for(user, bid_id, self.index.chain_now())
        bid_bytes = bytes.fromhex(bid_id[2:])
        approval = Approval(bid_bytes, self.market.client.chain_id, user, stamp).encode()
        signature = sign_blob(self.account, approval)
        self.approvals.add(user, bid_id, stamp,
                           self.market.approval_key(user, self.address, bid_bytes, approval))
        return approval, signature

    async def _forget_opened_approvals(self, user: str) -> None:
        """A user at the cap may have opened sessions our index has not seen yet: ask the
        chain about those (a few reads, and only for a user who was given approvals)."""
        if self.approvals.outstanding(user) < self.approvals.per_user:
            return
        for key in self.approvals.sessions_of(user):
            if await self._read(self.market.approval_used(key)):
                self.approvals.consume(key)

    def _check_approval_cap(self, user: str) -> None:
        try:
            self.approvals.check(user)
        except TooManyApprovals as exc:
            raise RpcError(ErrorCode.TOO_MANY_APPROVALS, str(exc)) from None

    async def _check_funds(self, user: str, price_per_second: int) -> None:
        """The requester can pay the bid's shortest session and the gas to open it."""
        need = price_per_second * MIN_SESSION_SECONDS
        mor = await self._read(self.market.mor_balance(user))
        if mor < need:
            raise RpcError(ErrorCode.INSUFFICIENT_FUNDS,
                           f"a session on this bid needs at least {need} MOR wei "
                           f"({MIN_SESSION_SECONDS} s); the address holds {mor}")
        gas_wei = OPEN_SESSION_GAS * await self._gas_price_wei()
        eth = await self._read(self.market.eth_balance(user))
        if eth < gas_wei:
            raise RpcError(ErrorCode.INSUFFICIENT_FUNDS,
                           f"opening a session needs about {gas_wei} wei of gas; "
                           f"the address holds {eth}")

    async def _gas_price_wei(self) -> int:
        at, price = self._gas_price
        if time.monotonic() - at > _GAS_PRICE_TTL_S:
            price = int(await self._read(ChainClient._guard(self.market.client.w3.eth.gas_price)))
            self._gas_price = (time.monotonic(), price)
        return price

    # -- session.prompt ---------------------------------------------------------

    async def session_prompt(self, params: dict[str, Any], ctx: RequestContext
                             ) -> AsyncIterator[bytes | dict[str, Any]]:
        """Our wire: the body sealed to us, the answer as ready-to-write SSE chunks (or the
        one reply), the usage in the signed trailer."""
        session_id = _bytes32(params, "sessionId")
        _check_format(params)
        ctx.use_peer_key(_param(params, "key"))
        api = _api(params)
        body = _chat_body(ctx)
        async with contextlib.aclosing(self.prompt(session_id, ctx.sender, body,
                                                   trailer=ctx.trailer, api=api)) as items:
            async for item in items:
                yield _sse(item) if isinstance(item, list) else item

    async def prompt(self, session_id: str, user: str, body: dict[str, Any], *,
                     trailer: dict[str, Any] | None = None, api: PromptApi = "chat"
                     ) -> AsyncGenerator[PromptItem, None]:
        """The prompt core: ``user`` (authenticated by the caller) asks ``body`` (an OpenAI
        request of ``api``: chat, legacy completions or embeddings; ``stream`` absent
        means streamed, embeddings never stream) on ``session_id``.

        Session checks, then a capacity slot (waiting in the model's queue when all are
        busy), then the backend's answer item by item, then the counts the backend's usage
        lacked asked of the backend (``_count_missing``), then the usage into the metrics
        and the store, and into ``trailer["usage"]``.

        Stopped early (our wire's ``rpc.cancel`` cancels the task; a consumer gone closes
        the generator), the backend request is closed at once (``OpenAIBackend`` counts
        the abort), the slot is freed by the unwinding itself, before any other task
        runs, and what was generated is recorded as measured, estimates marked.
        """
        _check_body(body, api)
        session = await self._check_session(session_id, user)
        model_id = normalize_model_id(session.model_id)
        backend = self.backends.get(model_id)
        config = self.models.get(model_id)
        if backend is None or config is None:
            raise RpcError(ErrorCode.MODEL_NOT_SERVED, f"model {model_id} is not served here")
        if not config.serves(api):
            raise RpcError(ErrorCode.BAD_REQUEST, f"model {config.model_name} does not serve "
                           f"{api} (it is an {config.model_type} model)", {"param": "model"})
        body = _NORMALIZE[api](body)  # after the session checks: only its user spends CPU
        if api == "embeddings":
            body["stream"] = False  # an answer in one piece (no stream is sent to the server)
        meter: UsageMeter | None = None
        try:
            async with self.capacity.prompt_slot(model_id, session_id):
                # measured from here: a wait for the slot is no backend's time to first token
                if "n" in body:  # several choices (normalizing keeps n only above 1)
                    meter = MeterSum(prompt_tokens_estimate=estimate_prompt_tokens(body))
                    async with contextlib.aclosing(serve_choices(
                            body, meter, self.capacity.extra_slots(model_id, body["n"] - 1),
                            functools.partial(self._generate, backend, api=api),
                            _counted)) as choices:
                        async for item in choices:
                            yield item
                else:
                    meter = UsageMeter(prompt_tokens_estimate=estimate_prompt_tokens(body))
                    async for item in self._generate(backend, body, meter, api):
                        yield item
        except NoCapacity as exc:
            raise RpcError(ErrorCode.NO_CAPACITY, str(exc),
                           {"retryAfter": exc.retry_after_s}) from None
        except SessionBusy as exc:
            raise RpcError(ErrorCode.SESSION_BUSY, str(exc),
                           {"promptsPerSession": exc.limit}) from None
        except (asyncio.CancelledError, GeneratorExit):
            if meter is not None:  # the slot is free already; the store may take its time
                await self._record_stopped(session_id, backend, body, meter)
            raise
        usage = await self._record_usage(session_id, backend, body, meter)
        if trailer is not None:
            trailer["usage"] = usage

    async def _record_stopped(self, session_id: str, backend: BackendPool,
                              body: dict[str, Any], meter: UsageMeter) -> None:
        """A prompt stopped before its end: what it used so far, without asking the
        backend anything more (the next prompt is due there)."""
        try:
            usage = await self._record_usage(session_id, backend, body, meter)
        except Exception as exc:  # a failure here must not replace the cancellation
            log.warning("stopped_prompt_not_recorded", session=session_id, error=str(exc))
            return
        log.info("prompt_stopped", session=session_id, model=backend.model_name,
                 generated=usage["completion_tokens"])  # a "token" key would be masked

    async def _record_usage(self, session_id: str, backend: BackendPool,
                            body: dict[str, Any], meter: UsageMeter) -> dict[str, Any]:
        """The prompt's figures: into the metrics and the store (the receipt of
        ``session.report`` sums them); returned for our wire's signed trailer, where
        ``estimated`` names the counts that are estimates, if any."""
        result = meter.result()
        usage: dict[str, Any] = {"prompt_tokens": result.prompt_tokens,
                                 "completion_tokens": result.completion_tokens,
                                 "ttft_ms": result.ttft_ms, "tps_x1000": result.tps_x1000}
        if result.estimated:
            usage["estimated"] = list(result.estimated)
            self.metrics.estimated(backend.model_name, result.estimated)
        self.metrics.observe_answer(backend.model_name, usage=usage,
                                    ttft_s=result.ttft_ms / 1000 if body.get("stream", True)
                                    else None)
        await self.store.record_usage(session_id, result.prompt_tokens,
                                      result.completion_tokens, result.ttft_ms,
                                      result.tps_x1000)
        return usage

    async def session_of(self, session_id: str) -> Session:
        """The session as the checks read it (``SESSION_NOT_FOUND`` if it never opened): a
        wire whose requests do not name their user learns it here."""
        return await self._known_session(session_id, cache=True)

    async def _known_session(self, session_id: str, *, cache: bool) -> Session:
        """The session from our cache or the chain; ``SESSION_NOT_FOUND`` if it never opened.

        Only our own sessions are cached (``cache``): their SessionClosed event evicts
        them, so probing other providers' session ids cannot grow the cache.
        """
        session = self._sessions.get(session_id)
        if session is not None:
            return session
        session = await self._read(self.market.get_session(session_id))
        if not session.exists:
            raise RpcError(ErrorCode.SESSION_NOT_FOUND, f"session {session_id} not found")
        if cache and self._is_ours(session.provider):
            self._sessions[session_id] = session
        return session

    async def _check_session(self, session_id: str, sender: str) -> Session:
        """Every per-prompt check of DESIGN.md §3, each with its own error code."""
        session = await self._known_session(session_id, cache=True)
        indexed = self.index.sessions.get(session_id)
        if session.closed or (indexed is not None and indexed.closed):
            raise RpcError(ErrorCode.SESSION_CLOSED, f"session {session_id} is closed")
        if not self._is_ours(session.provider):
            raise RpcError(ErrorCode.WRONG_PROVIDER,
                           f"session {session_id} is with provider {session.provider}")
        if not same_address(session.user, sender):
            raise RpcError(ErrorCode.NOT_SESSION_USER,
                           f"session {session_id} belongs to another user")
        if self.index.chain_now() >= session.ends_at:
            raise RpcError(ErrorCode.SESSION_EXPIRED, f"session {session_id} has ended")
        if not self.capacity.tracks(session_id) and self.capacity.serves(session.model_id):
            # opened while we were down, or its event is not indexed yet: it holds a slot
            self.approvals.consume(session_id)
            self.capacity.track_session(session_id, session.model_id, float(session.ends_at))
        return session

    # -- session.report ---------------------------------------------------------

    async def session_report(self, params: dict[str, Any], ctx: RequestContext
                             ) -> dict[str, Any]:
        receipt, signature, usage = await self.report(_bytes32(params, "sessionId"),
                                                      ctx.sender)
        return {"receipt": "0x" + receipt.hex(), "signature": "0x" + signature.hex(),
                "usage": usage}

    async def report(self, session_id: str, user: str) -> tuple[bytes, bytes, dict[str, int]]:
        """The signed receipt of ``session_id`` for its ``user`` (authenticated by the
        caller): the receipt, our signature and the usage it sums."""
        session = await self._known_session(session_id, cache=False)
        if not self._is_ours(session.provider):
            raise RpcError(ErrorCode.WRONG_PROVIDER, "session is with another provider")
        if not same_address(session.user, user):
            raise RpcError(ErrorCode.NOT_SESSION_USER, "session belongs to another user")
        return await self._signed_receipt(session_id)

    async def _signed_receipt(self, session_id: str) -> tuple[bytes, bytes, dict[str, int]]:
        """The receipt for ``closeSession``: this session's measured usage, signed."""
        usage = await self.store.usage(session_id)
        prompts = max(1, usage["prompts"])
        receipt = Receipt(
            session_id=bytes.fromhex(session_id[2:]),
            chain_id=self.market.client.chain_id,
            timestamp=self.index.chain_now(),
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
        now = self.index.chain_now()
        for session_id in [s for s, v in self._sessions.items() if v.ends_at <= now]:
            del self._sessions[session_id]
        for session_id, session in list(self.index.sessions.items()):
            if self._is_ours(session.provider):
                await self._settle(session_id, session, now)

    async def _settle(self, session_id: str, session: Session, now: int) -> None:
        if isinstance(self.market, MorpheusMarketplace):
            await self._claim(session_id, session, now)
            return
        try:
            if not session.closed and now >= session.ends_at + self.close_grace_s:
                receipt, signature, _ = await self._signed_receipt(session_id)
                tx = await self.market.close_session(receipt, signature)
                log.info("expired_session_closed", session=session_id, tx=tx.tx_hash,
                         earned=str(tx.event("SessionSettled")["providerEarned"]))
            elif (session.closed and session.held and not session.claimed
                  and now >= session.release_at):
                tx = await self.market.claim_for_provider(session_id)
                log.info("disputed_share_claimed", session=session_id, tx=tx.tx_hash,
                         amount=str(tx.event("ProviderClaimed")["amount"]))
        except ChainError as exc:
            # Reverts here mean the user settled first: the index catches up.
            log.info("provider_settlement_skipped", session=session_id, error=str(exc))

    async def _claim(self, session_id: str, session: Session, now: int) -> None:
        """The diamond pays at the user's close; what is left (a session its user never
        closed, or a disputed day's share after midnight) is claimed, once and only when
        positive: ``claimForProvider`` reverts (Panic 0x11) when nothing is owed."""
        assert isinstance(self.market, MorpheusMarketplace)
        if session_id in self._claimed or (now < session.ends_at + self.close_grace_s \
                and not session.closed):
            return
        owed = self.market.claimable(session, now)
        if owed <= 0:
            return
        try:
            tx = await self.market.claim_for_provider(session_id)
        except ChainError as exc:
            log.info("provider_claim_skipped", session=session_id, error=str(exc))
            return
        # No event names the session: remember it, or every sweep would claim again.
        self._claimed.add(session_id)
        log.info("provider_share_claimed", session=session_id, tx=tx.tx_hash, amount=str(owed))

    # -- health -----------------------------------------------------------------

    async def backend_health(self) -> dict[str, dict[str, Any]]:
        """One component per model: does its backend answer ``GET /models``?"""
        return await self.health.health()

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
                 "slots": m.total_slots,
                 "capacity": snapshot.get(normalize_model_id(m.model_id), {})}
                for m in self.models.models
            ],
            "promptsPerSession": self.capacity.prompts_per_session,
            "unusedApprovals": len(self.approvals),
        }

    @staticmethod
    async def _read(awaitable: Awaitable[_T]) -> _T:
        """A chain read; a failure is ``CHAIN_UNAVAILABLE`` with no detail for the peer
        (RPC URLs carry API keys), the detail in our log."""
        try:
            return await awaitable
        except ChainError as exc:
            log.warning("chain_read_failed", error=str(exc))
            raise RpcError(ErrorCode.CHAIN_UNAVAILABLE,
                           "the provider cannot reach its chain right now; retry later") from None

    async def _generate(self, pool: BackendPool, body: dict[str, Any], meter: UsageMeter,
                        api: PromptApi = "chat") -> AsyncGenerator[PromptItem, None]:
        """One generation on one backend of ``pool`` (``_answer``, then the counts its usage
        lacked, asked of the same server: its prompt cache and tokenizer are its own), with
        backend failures as RPC errors that name no URL or path. The lease takes a failed
        backend out and retries another before the first token. (One generator between the
        backend's and the prompt's: each is a hop per chunk.)"""
        with pool.lease() as backend:
            try:
                async with contextlib.aclosing(_answer(backend, body, meter, api)) as items:
                    async for item in items:
                        yield item
            except BackendUnavailable as exc:
                log.warning("backend_unavailable", model=backend.model_name, reason=exc.reason)
                raise RpcError(ErrorCode.BACKEND_UNAVAILABLE,
                               "the model server is unavailable") from None
            except BackendError as exc:
                log.warning("backend_error", model=backend.model_name, status=exc.status,
                            message=exc.message, refusal=exc.refusal)
                raise backend_refusal(exc) from None
            except BackendFailure as exc:
                log.warning("backend_failed", model=backend.model_name, error=str(exc))
                raise RpcError(ErrorCode.BACKEND_ERROR,
                               "the model server's answer broke off") from None
            await _count_missing(backend, body, meter, api)


def _answer(backend: PromptBackend, body: dict[str, Any], meter: UsageMeter,
            api: PromptApi = "chat") -> AsyncGenerator[PromptItem, None]:
    """The backend's answer, measured: a stream as each read's raw event payloads
    (forwarded without a JSON round trip; the backend's own generator, no wrapper), a
    non-stream reply as its one JSON object."""
    if body.get("stream", True):
        return backend.stream_events(body, meter, api)
    return _whole(backend, body, meter, api)


async def _whole(backend: PromptBackend, body: dict[str, Any], meter: UsageMeter,
                 api: PromptApi) -> AsyncGenerator[PromptItem, None]:
    response = await backend.complete(body, api)
    meter.observe_response(response)
    if api == "embeddings":
        meter.count("completion", 0, "backend")  # vectors, no generated tokens
    yield response


async def _count_missing(backend: PromptBackend, body: dict[str, Any], meter: UsageMeter,
                         api: PromptApi = "chat") -> None:
    """The counts the backend's usage lacked (llama-cpp-python's streams carry none),
    asked of the backend: the prompt's as the same request unstreamed counts it (a
    non-stream reply without usage would not say more), the completion's by its
    tokenizer over the streamed text. Whatever it cannot tell stays an estimate."""
    missing = meter.missing()
    if not missing:
        return
    text = meter.text() if "completion" in missing else None
    prompt, completion = await asyncio.gather(
        backend.prompt_tokens(body, api) if "prompt" in missing and meter.streamed
        else _none(),
        backend.count_tokens(text) if text is not None else _none())
    if prompt is not None:
        meter.count("prompt", prompt, "backend")
    if completion is not None:
        meter.count("completion", completion, "tokenizer")


async def _none() -> None:
    return None


async def _counted(body: dict[str, Any], meter: UsageMeter) -> None:
    """Each choice's counts are asked inside its generation (``_generate``), of its own
    backend."""


def backend_refusal(exc: BackendError) -> RpcError:
    """A backend's error for the peer: ``BACKEND_ERROR`` whose data says what a client
    should get, ``status`` (the HTTP status) and, for a refusal of the request or a busy
    backend, the OpenAI ``code``, the ``param`` and ``retryAfter`` (seconds). The message
    is ours (``client_message``): backend texts stay in our log."""
    refusal = exc.refusal
    if refusal == "failed":
        return RpcError(ErrorCode.BACKEND_ERROR, exc.client_message, {"status": exc.status})
    data: dict[str, Any] = {"status": exc.client_status, "code": refusal}
    if refusal == "context_length_exceeded":
        data["param"] = "messages"
    elif refusal == "invalid_request_error" and exc.body.param:
        data["param"] = exc.body.param
    elif refusal in ("rate_limit_exceeded", "backend_overloaded"):
        data["retryAfter"] = exc.retry_after_s()
    return RpcError(ErrorCode.BACKEND_ERROR, exc.client_message, data)


class _QueueMetrics:
    """The capacity queue's observations as metrics, labelled by model name."""

    __slots__ = ("_metrics", "_names")

    def __init__(self, metrics: Metrics, names: dict[str, str]) -> None:
        self._metrics = metrics
        self._names = names

    def queue_depth(self, model_id: str, depth: int) -> None:
        self._metrics.prompt_queue_depth(self._names.get(model_id, model_id), depth)

    def queue_left(self, model_id: str, waited_s: float, outcome: QueueOutcome) -> None:
        self._metrics.prompt_queue_left(self._names.get(model_id, model_id), waited_s, outcome)


def _sse(batch: list[bytes]) -> bytes:
    """Ready-to-write SSE bytes of one batch: ``data: {…}`` and a blank line per event."""
    return b"data: " + b"\n\ndata: ".join(batch) + b"\n\n"


async def _generate(backend: OpenAIBackend, body: dict[str, Any], meter: UsageMeter
                    ) -> AsyncIterator[bytes | dict[str, Any]]:
    """Our wire's chunks: each stream batch as SSE bytes, a non-stream reply as one JSON."""
    async with contextlib.aclosing(_answer(backend, body, meter)) as items:
        async for item in items:
            yield _sse(item) if isinstance(item, list) else item


def _integers_only(value: Any) -> Any:
    """Signed frames are canonical JSON (no floats): render floats as strings."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return {k: _integers_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integers_only(v) for v in value]
    return value
