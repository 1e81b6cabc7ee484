"""Chat completions through a paid session, with failover before the first token.

A request resolves its model (on-chain name or id), takes an open session for
it (or opens one), and streams ``session.prompt``. Until the first chunk has
arrived nothing has reached the client, so a provider that is unreachable,
refuses, or stays silent past ``first_token_timeout`` is dropped: its session
is closed (refunding the unused stake) and the next-rated bid is tried. The
client sees one answer, or one clear error.

A session runs as many prompts at once as its provider allows (one by default):
a request waits for its turn on the session (``first_token_timeout`` at most, then
429 ``session_busy``) rather than being refused by the provider.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from proxy_router import bounded_json
from proxy_router.chain.index import MarketIndex
from proxy_router.consumer.errors import ApiError
from proxy_router.consumer.schemas import ChatRequest
from proxy_router.consumer.sessions import ConsumerSession, SessionManager
from proxy_router.metrics import Metrics
from proxy_router.rpc import ErrorCode, RpcError, RpcStream, RpcUnavailable
from proxy_router.rpc.protocol import MAX_FRAME_BYTES, MAX_PAYLOAD_BYTES, SSE_FORMAT

log = structlog.get_logger(__name__)

# Errors that say "this provider is broken" rather than "your request is wrong" or
# "busy right now" (NO_CAPACITY is a 429 for the client: the session stays good).
FAILOVER_CODES = {ErrorCode.BACKEND_UNAVAILABLE, ErrorCode.INTERNAL}
# Errors that say "this session is over": open a new one with the same provider list.
SESSION_OVER_CODES = {ErrorCode.SESSION_EXPIRED, ErrorCode.SESSION_CLOSED}
MAX_ATTEMPTS = 3
T = TypeVar("T")


@dataclass
class Reply:
    """A started answer: the first chunk (already received) and the rest."""

    session: ConsumerSession
    stream: RpcStream
    first: bytes
    _closed: bool = field(default=False, init=False)

    def close(self) -> None:
        """Give the session's turn back (once; the stream itself closes on its own)."""
        if not self._closed:
            self._closed = True
            self.session.turns.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.first
        async for chunk in self.stream:
            yield chunk

    @property
    def usage(self) -> dict[str, Any] | None:
        result = self.stream.result or {}
        return result.get("usage")


class ChatService:
    def __init__(self, sessions: SessionManager, index: MarketIndex, *,
                 session_duration: int, failover: bool, first_token_timeout: float,
                 metrics: Metrics | None = None) -> None:
        self.sessions = sessions
        self.index = index
        self.session_duration = session_duration
        self.failover = failover
        self.first_token_timeout = first_token_timeout
        self.metrics = metrics or Metrics("consumer")
        self._background: set[asyncio.Task[None]] = set()

    def resolve_model(self, name: str) -> dict[str, Any]:
        model = self.index.find_model(name)
        if model is None or model.get("isDeleted"):
            raise ApiError(404, "model_not_found",
                           f"The model `{name}` does not exist on the marketplace",
                           param="model")
        return model

    async def start(self, req: ChatRequest, session_id: str | None) -> Reply:
        """Send the prompt and wait for its first chunk, failing over when allowed.
        The time this takes is the client's time to first token."""
        begun = time.perf_counter()

        async def started(reply: Reply) -> Reply:
            return reply
        reply = await self._with_failover(req, session_id, started)
        self.metrics.observe_answer(self._model_name(reply), usage=None,
                                    ttft_s=time.perf_counter() - begun)
        return reply

    def finished(self, reply: Reply) -> None:
        """A streamed answer completed: count its tokens (from the signed trailer)."""
        self.metrics.observe_answer(self._model_name(reply), ttft_s=None, usage=reply.usage)

    async def complete(self, req: ChatRequest, session_id: str | None
                       ) -> tuple[dict[str, Any], ConsumerSession]:
        """A whole non-streamed answer. Nothing reaches the client before it is
        complete, so a provider failing at any point is failed over."""
        async def whole(reply: Reply) -> tuple[dict[str, Any], ConsumerSession]:
            try:
                async for _ in reply.stream:  # the signed trailer checks integrity
                    pass
            finally:
                reply.close()
            self.finished(reply)
            try:
                body = bounded_json.loads(reply.first, max_bytes=MAX_FRAME_BYTES)
            except ValueError:
                raise RpcError(ErrorCode.BACKEND_ERROR, "provider sent invalid JSON") from None
            if not isinstance(body, dict):
                raise RpcError(ErrorCode.BACKEND_ERROR, "provider sent a non-object answer")
            return body, reply.session
        return await self._with_failover(req, session_id, whole)

    def _model_name(self, reply: Reply) -> str:
        model = self.index.models.get(reply.session.model_id.lower()) or {}
        return str(model.get("name") or reply.session.model_id)

    async def _with_failover(self, req: ChatRequest, session_id: str | None,
                             consume: Callable[[Reply], Awaitable[T]]) -> T:
        model_id = self.resolve_model(req.model)["id"]
        payload = json.dumps(req.upstream_body()).encode()
        if len(payload) > MAX_PAYLOAD_BYTES:  # would not fit one frame once sealed
            raise ApiError(413, "request_too_large",
                           f"the request is {len(payload)} bytes; a prompt may be at most "
                           f"{MAX_PAYLOAD_BYTES} bytes", param="messages")
        explicit = self._explicit_session(session_id, model_id) if session_id else None
        exclude: set[str] = set()
        last_error = "no attempt made"
        for _ in range(MAX_ATTEMPTS):
            try:
                session = explicit or await self.sessions.session_for_model(
                    model_id, self.session_duration, exclude)
            except ApiError as exc:
                if not exclude:
                    raise
                # Every remaining provider was tried: report why the last one failed.
                raise ApiError(503, "no_provider_available",
                               f"no provider could serve the request; last error: "
                               f"{last_error}; {exc.message}", type_="api_error") from None
            self.sessions.touch(session.session_id)
            try:
                return await consume(await self._attempt(session, payload))
            except RpcError as exc:
                last_error = f"{session.provider}: {exc.code}: {exc.message}"
                if explicit is not None or exc.code not in FAILOVER_CODES | SESSION_OVER_CODES:
                    raise ApiError.from_rpc(exc) from None
                if exc.code in SESSION_OVER_CODES:
                    session.status = "closed"
                    continue
            except (RpcUnavailable, TimeoutError) as exc:
                last_error = f"{session.provider}: {type(exc).__name__}: {exc}"
                if explicit is not None:
                    raise ApiError(503, "provider_unavailable", last_error,
                                   type_="api_error") from None
            if not self.failover:
                raise ApiError(503, "provider_unavailable", last_error, type_="api_error")
            log.warning("failover", session=session.session_id, provider=session.provider,
                        reason=last_error)
            exclude.add(session.provider.lower())
            self.drop(session)
        raise ApiError(503, "no_provider_available",
                       f"no provider could serve the request; last error: {last_error}",
                       type_="api_error")

    def drop(self, session: ConsumerSession) -> None:
        """Stop using a failed provider's session; settle it in the background."""
        if session.status == "open":
            session.status = "closing"
            task = asyncio.create_task(self.sessions.discard(session))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _explicit_session(self, session_id: str, model_id: str) -> ConsumerSession:
        session = self.sessions.sessions.get(session_id.lower())
        if session is None or session.status != "open":
            raise ApiError(404, "session_not_found",
                           f"no open session {session_id} of this wallet", param="session_id")
        if session.model_id.lower() != model_id.lower():
            raise ApiError(400, "session_model_mismatch",
                           f"session {session_id} is for model {session.model_id}",
                           param="model")
        return session

    async def _attempt(self, session: ConsumerSession, payload: bytes) -> Reply:
        """Wait for a turn on the session, send the prompt, wait for its first chunk.
        The turn is held by the returned ``Reply`` until its ``close()``."""
        try:
            async with asyncio.timeout(self.first_token_timeout):
                await session.turns.acquire()
        except TimeoutError:
            raise ApiError(429, "session_busy",
                           f"session {session.session_id} is still answering earlier prompts",
                           type_="rate_limit_error", headers={"Retry-After": "1"}) from None
        try:
            return await self._send(session, payload)
        except BaseException:
            session.turns.release()
            raise

    async def _send(self, session: ConsumerSession, payload: bytes) -> Reply:
        client = self.sessions.pool.get(session.endpoint, session.provider)
        cipher = await client.cipher_for(session.key)
        stream = client.stream("session.prompt",
                               {"sessionId": session.session_id,
                                "key": session.key.public_key_hex, "format": SSE_FORMAT},
                               cipher=cipher, payload=payload)
        try:
            async with asyncio.timeout(self.first_token_timeout):
                first = await stream.__anext__()
        except StopAsyncIteration:
            raise RpcError(ErrorCode.BACKEND_ERROR, "provider sent an empty answer") from None
        except BaseException:
            await stream.aclose()
            raise
        return Reply(session, stream, first)
