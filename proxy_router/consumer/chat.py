"""Chat completions through a paid session, with failover before the first token.

A request resolves its model (on-chain name or id), takes an open session for
it (or opens one), and streams ``session.prompt``. Until the first chunk has
arrived nothing has reached the client, so a provider that is unreachable,
refuses, or stays silent past ``first_token_timeout`` is dropped: its session
is closed (refunding the unused stake) and the next-rated bid is tried
(``failover.verdict`` decides which failures are the provider's). The client
sees one answer, or one clear error (a ``domain_errors`` exception or the
provider's ``RpcError``, translated by the API).

A session runs as many prompts at once as its provider allows (one by default):
a request waits for its turn on the session rather than being refused by the provider,
first come first served, at most ``queue_depth`` of them per session and each at most
``queue_wait_s``, then ``SessionBusy`` (a 429 with Retry-After). The provider queues
prompts that find all of its slots busy the same way.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from pydantic import ValidationError

from proxy_router import bounded_json
from proxy_router.chain.index import MarketIndex
from proxy_router.chain.types import Model
from proxy_router.consumer.domain_errors import (
    BadProviderResponse,
    ConsumerError,
    ModelNotFound,
    NoOpenSession,
    NoProviderAvailable,
    ProviderUnavailable,
    RequestTooLarge,
    SessionBusy,
    SessionModelMismatch,
    WrongModelKind,
)
from proxy_router.consumer.failover import Verdict, verdict
from proxy_router.consumer.prompt_schemas import (
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    TextCompletion,
)
from proxy_router.consumer.schemas import ChatCompletion, ChatRequest
from proxy_router.consumer.sessions import ConsumerSession, LocalStatus, SessionManager
from proxy_router.metrics import Metrics
from proxy_router.morrpc import ErrorCode, RpcError, RpcStream, RpcUnavailable
from proxy_router.morrpc.protocol import (
    MAX_FRAME_BYTES,
    MAX_PAYLOAD_BYTES,
    SSE_FORMAT,
    PromptApi,
)

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 3
QUEUE_DEPTH = 32
"""Prompts that may wait for a turn on one session (``PROMPT_QUEUE_DEPTH``'s default)."""
QUEUE_WAIT_S = 30.0
"""Longest wait for a turn (``PROMPT_QUEUE_WAIT_S``'s default)."""
T = TypeVar("T")
PromptRequest = ChatRequest | CompletionRequest | EmbeddingRequest
"""What a paid session answers; its class's ``api`` names the provider's route."""
Answer = ChatCompletion | TextCompletion | EmbeddingList
ANSWERS: dict[PromptApi, type[Answer]] = {"chat": ChatCompletion,
                                          "completions": TextCompletion,
                                          "embeddings": EmbeddingList}
EMBEDDING_TAG = "embedding"
"""The on-chain tag of a model that answers ``/v1/embeddings`` (and only that)."""


@dataclass
class Reply:
    """A started answer: the first chunk (already received) and the rest."""

    session: ConsumerSession
    stream: RpcStream
    first: bytes
    _closed: bool = field(default=False, init=False)

    def close(self) -> None:
        """Give the session's turn back (once; for a stream read to its end)."""
        if not self._closed:
            self._closed = True
            self.session.turns.release()

    async def aclose(self) -> None:
        """Done with the answer, read or not: a stream not read to its end is cancelled
        at the provider (``rpc.cancel``, the reference wire's close) before the turn is
        given back, so the session's next prompt goes out behind the cancel and never
        finds the provider still busy with this one."""
        try:
            await self.stream.aclose()
        finally:
            self.close()

    @property
    def usage(self) -> dict[str, Any] | None:
        result = self.stream.result or {}
        return result.get("usage")


class ChatService:
    def __init__(self, sessions: SessionManager, index: MarketIndex, *,
                 session_duration: int, failover: bool, first_token_timeout: float,
                 metrics: Metrics | None = None, queue_depth: int = QUEUE_DEPTH,
                 queue_wait_s: float = QUEUE_WAIT_S) -> None:
        self.sessions = sessions
        self.index = index
        self.session_duration = session_duration
        self.failover = failover
        self.first_token_timeout = first_token_timeout
        self.metrics = metrics or Metrics("consumer")
        self.queue_depth = queue_depth
        self.queue_wait_s = queue_wait_s
        self._waiting: dict[str, int] = {}
        """Prompts waiting for a turn, per session id (entries only while > 0)."""
        self._queued: dict[str, int] = {}
        """The same per model name, for the queue-depth gauge."""
        self._background: set[asyncio.Task[None]] = set()

    def resolve_model(self, name: str) -> Model:
        model = self.index.find_model(name)
        if model is None or model.is_deleted:
            raise ModelNotFound(f"The model `{name}` does not exist on the marketplace")
        return model

    async def start(self, req: PromptRequest, session_id: str | None) -> Reply:
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

    async def complete(self, req: PromptRequest, session_id: str | None
                       ) -> tuple[Answer, ConsumerSession]:
        """A whole non-streamed answer (a chat or legacy completion, or embeddings).
        Nothing reaches the client before it is complete, so a provider failing at any
        point is failed over (but not one whose well-formed answer is not what was asked:
        that is reported)."""
        async def whole(reply: Reply) -> tuple[dict[str, Any], ConsumerSession]:
            try:
                async for _ in reply.stream:  # the signed trailer checks integrity
                    pass
            finally:
                # read to its end (or failed): nothing to cancel; stopped (the client
                # left): cancelled at the provider before the turn is given back
                await reply.aclose()
            self.finished(reply)
            try:
                body = bounded_json.loads(reply.first, max_bytes=MAX_FRAME_BYTES)
            except ValueError:
                raise RpcError(ErrorCode.BACKEND_ERROR, "provider sent invalid JSON") from None
            if not isinstance(body, dict):
                raise RpcError(ErrorCode.BACKEND_ERROR, "provider sent a non-object answer")
            return body, reply.session
        body, session = await self._with_failover(req, session_id, whole)
        try:
            return ANSWERS[req.api].model_validate(body), session
        except ValidationError as exc:
            raise BadProviderResponse(f"provider {session.provider} sent an invalid "
                                      f"answer: {exc.errors()[0]['msg']}") from None

    def _model_name(self, reply: Reply) -> str:
        return self._name_of(reply.session)

    def _name_of(self, session: ConsumerSession) -> str:
        model = self.index.models.get(session.model_id.lower())
        return model.name if model is not None and model.name else session.model_id

    def resolve_for(self, name: str, api: PromptApi) -> Model:
        """The model ``name`` if it does what ``api`` asks (by its on-chain tags)."""
        model = self.resolve_model(name)
        embedding = EMBEDDING_TAG in model.tags
        if embedding and api != "embeddings":
            raise WrongModelKind(f"`{name}` is an embedding model: use /v1/embeddings")
        if api == "embeddings" and not embedding:
            raise WrongModelKind(f"`{name}` is not an embedding model (its on-chain tags "
                                 f"lack `{EMBEDDING_TAG}`)")
        return model

    async def _with_failover(self, req: PromptRequest, session_id: str | None,
                             consume: Callable[[Reply], Awaitable[T]]) -> T:
        model_id = self.resolve_for(req.model, req.api).id
        payload = json.dumps(req.upstream_body()).encode()
        if len(payload) > MAX_PAYLOAD_BYTES:  # would not fit one frame once sealed
            raise RequestTooLarge(f"the request is {len(payload)} bytes; a prompt may be at "
                                  f"most {MAX_PAYLOAD_BYTES} bytes")
        explicit = self._explicit_session(session_id, model_id) if session_id else None
        exclude: set[str] = set()
        last_error = "no attempt made"
        for _ in range(MAX_ATTEMPTS):
            try:
                session = explicit or await self.sessions.session_for_model(
                    model_id, self.session_duration, exclude)
            except ConsumerError as exc:
                if not exclude:
                    raise
                # Every remaining provider was tried: report why the last one failed.
                raise NoProviderAvailable(f"no provider could serve the request; last error: "
                                          f"{last_error}; {exc}") from None
            self.sessions.touch(session.session_id)
            try:
                return await consume(await self._attempt(session, payload, req.api))
            except (RpcError, RpcUnavailable, TimeoutError) as exc:
                last_error = _describe(session, exc)
                step = verdict(exc)
                if step is Verdict.SURFACE or (explicit is not None and isinstance(exc, RpcError)):
                    raise
                if explicit is not None:  # the client chose this provider: no other
                    raise ProviderUnavailable(last_error) from None
                if step is Verdict.REOPEN:
                    self.sessions.ended(session)  # settled now, never reused
                    continue
                if not self.failover:
                    raise ProviderUnavailable(last_error) from None
            log.warning("failover", session=session.session_id, provider=session.provider,
                        reason=last_error)
            exclude.add(session.provider.lower())
            self.drop(session)
        raise NoProviderAvailable(f"no provider could serve the request; last error: "
                                  f"{last_error}")

    def drop(self, session: ConsumerSession) -> None:
        """Stop using a failed provider's session; settle it in the background."""
        if session.status is LocalStatus.OPEN:
            session.status = LocalStatus.CLOSING
            task = asyncio.create_task(self.sessions.discard(session))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _explicit_session(self, session_id: str, model_id: str) -> ConsumerSession:
        session = self.sessions.sessions.get(session_id.lower())
        if session is None or session.status is not LocalStatus.OPEN:
            raise NoOpenSession(f"no open session {session_id} of this wallet")
        if session.model_id.lower() != model_id.lower():
            raise SessionModelMismatch(f"session {session_id} is for model {session.model_id}")
        return session

    async def _attempt(self, session: ConsumerSession, payload: bytes, api: PromptApi
                       ) -> Reply:
        """Wait for a turn on the session, send the prompt, wait for its first chunk.
        The turn is held by the returned ``Reply`` until its ``close()``."""
        await self._turn(session)
        try:
            return await self._send(session, payload, api)
        except BaseException:
            session.turns.release()
            raise

    async def _turn(self, session: ConsumerSession) -> None:
        """Take a turn on the session, waiting in its queue when all are taken.

        ``turns`` is an ``asyncio.Semaphore``: it wakes waiters first come first served,
        and a waiter that gives up (timeout, client gone) hands on a turn it was just
        given. At most ``queue_depth`` wait, each at most ``queue_wait_s``: then
        ``SessionBusy``, a 429 with Retry-After."""
        turns, name = session.turns, self._name_of(session)
        if not turns.locked():
            await turns.acquire()  # free: does not wait
            self.metrics.prompt_queue_left(name, 0.0, "served")
            return
        sid = session.session_id
        waiting = self._waiting.get(sid, 0)
        if waiting >= self.queue_depth or self.queue_wait_s <= 0:
            self.metrics.prompt_queue_left(name, 0.0, "full")
            raise SessionBusy(f"session {sid} is answering as many prompts as its provider "
                              f"allows and {waiting} more wait; retry later")
        self._wait_count(sid, name, 1)
        started = time.monotonic()
        outcome = "served"
        try:
            async with asyncio.timeout(self.queue_wait_s):
                await turns.acquire()
        except TimeoutError:
            outcome = "timeout"
            raise SessionBusy(f"session {sid} is still answering earlier prompts (waited "
                              f"{self.queue_wait_s:g} s for a turn); retry later") from None
        except BaseException:
            outcome = "cancelled"
            raise
        finally:
            self._wait_count(sid, name, -1)
            self.metrics.prompt_queue_left(name, time.monotonic() - started, outcome)

    def _wait_count(self, session_id: str, name: str, step: int) -> None:
        for counts, key in ((self._waiting, session_id), (self._queued, name)):
            left = counts.get(key, 0) + step
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)
        self.metrics.prompt_queue_depth(name, self._queued.get(name, 0))

    async def _send(self, session: ConsumerSession, payload: bytes, api: PromptApi) -> Reply:
        client = self.sessions.pool.get(session.endpoint, session.provider)
        cipher = await client.cipher_for(session.key)
        params = {"sessionId": session.session_id, "key": session.key.public_key_hex,
                  "format": SSE_FORMAT}
        if api != "chat":  # absent for chat: what every provider version understands
            params["api"] = api
        stream = client.stream("session.prompt", params, cipher=cipher, payload=payload)
        try:
            async with asyncio.timeout(self.first_token_timeout):
                first = await stream.__anext__()
        except StopAsyncIteration:
            raise RpcError(ErrorCode.BACKEND_ERROR, "provider sent an empty answer") from None
        except BaseException:
            await stream.aclose()
            raise
        return Reply(session, stream, first)


def _describe(session: ConsumerSession, exc: BaseException) -> str:
    """A failed attempt, for logs and for the client's error when all attempts failed."""
    if isinstance(exc, RpcError):
        return f"{session.provider}: {exc.code}: {exc.message}"
    return f"{session.provider}: {type(exc).__name__}: {exc}"
