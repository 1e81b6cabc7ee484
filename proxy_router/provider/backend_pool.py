"""Several model servers behind one model: balancing, failover before the first token,
per-backend health and metrics, and the size of the connection pool they share.

A model's ``apiUrl`` may list several servers (GPUs, a vLLM cluster); each has the
model's ``concurrentSlots``. A prompt takes a ``BackendLease``: the healthy backend with
the most free slots (ties in turn), held for the whole prompt, so that its follow-up
token counts (``prompt_tokens``, ``count_tokens``) ask the server that ran it (the prompt
cache and the tokenizer are per server). The lease has ``OpenAIBackend``'s interface, so
the service does not know how many servers there are.

A connection failure or a 5xx takes the backend out (``up`` False) until a probe of
``GET /models`` answers (``BackendMonitor`` probes it every second meanwhile). A prompt
whose backend fails before its first token is tried once more on another healthy one:
nothing reached the client yet. Once a token has gone out, a failure is the prompt's.

Metric labels name a backend by ``host:port`` only: URLs may carry keys in their
userinfo, path or query.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import structlog

from proxy_router.morrpc.protocol import PromptApi
from proxy_router.provider.backend import (
    BackendError,
    BackendFailure,
    BackendStreamBroken,
    BackendUnavailable,
    OpenAIBackend,
)
from proxy_router.provider.models_config import ModelsConfig
from proxy_router.provider.usage import UsageMeter

if TYPE_CHECKING:
    from proxy_router.metrics import Metrics

log = structlog.get_logger(__name__)

JSON = dict[str, Any]

CONNECTIONS_PER_SLOT = 2
"""A slot holds its stream's connection, then (that one back in the pool) the two token
counts asked together at the answer's end (``service._count_missing``)."""
CONNECTIONS_PER_BACKEND = 2
"""Beside the slots: the health probe and the tokenizer check (``_has_tokenizer``)."""


@dataclass(frozen=True, slots=True)
class BackendStatus:
    ok: bool
    error: str | None
    checked_at: float


class PromptBackend(Protocol):
    """What the service asks of a model's backend: an ``OpenAIBackend`` or a lease."""

    @property
    def model_name(self) -> str: ...

    def stream_events(self, body: Mapping[str, Any], meter: UsageMeter | None = None,
                      api: PromptApi = "chat") -> AsyncGenerator[list[bytes], None]: ...

    async def complete(self, body: Mapping[str, Any], api: PromptApi) -> JSON: ...

    async def prompt_tokens(self, body: Mapping[str, Any], api: PromptApi = "chat"
                            ) -> int | None: ...

    async def count_tokens(self, text: str) -> int | None: ...


def backend_label(url: str) -> str:
    """``host:port`` of ``url``: what a metric or a log may say of a backend (no userinfo,
    path or query, where keys hide)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _host_key(url: str) -> tuple[str, str, int]:
    """How aiohttp's ``limit_per_host`` groups connections: scheme, host, port."""
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or (
        443 if parts.scheme == "https" else 80)


def backend_connection_limits(models: ModelsConfig) -> tuple[int, int]:
    """``(limit, limit_per_host)`` of the provider's backend connector, from the models:
    each backend needs ``CONNECTIONS_PER_SLOT`` × its slots + ``CONNECTIONS_PER_BACKEND``;
    the total is their sum, the per-host limit the most any one server (host:port) needs
    (several models may share one). An embedded gguf server is one host of its own."""
    need: Counter[tuple[str, str, int]] = Counter()
    for m in models.models:
        per_backend = m.concurrent_slots * CONNECTIONS_PER_SLOT + CONNECTIONS_PER_BACKEND
        for url in m.api_urls:
            need[_host_key(url)] += per_backend
        if not m.api_urls:
            need[("gguf", m.model_id, 0)] += per_backend
    return max(1, sum(need.values())), max(1, max(need.values(), default=1))


def backend_session(models: ModelsConfig, *,
                    trace_configs: Sequence[aiohttp.TraceConfig] = ()) -> aiohttp.ClientSession:
    """The provider's HTTP session to its model servers, its pool sized by
    ``backend_connection_limits`` (aiohttp's default, 100 in all, would cap a farm)."""
    limit, per_host = backend_connection_limits(models)
    log.info("backend_pool_sized", limit=limit, limit_per_host=per_host)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=per_host),
        trace_configs=list(trace_configs))


@dataclass(eq=False)
class Member:
    """One backend of a pool, with its load and its last known health."""

    backend: OpenAIBackend
    label: str
    in_flight: int = 0
    status: BackendStatus | None = None
    """The last probe's or prompt's verdict; None: never checked (taken as up)."""
    requests: Any = field(default=None, repr=False)
    """Its requests counter (a labelled prometheus child), when metrics are kept."""

    @property
    def up(self) -> bool:
        return self.status is None or self.status.ok


def _failure_reason(exc: BackendFailure) -> str | None:
    """The metric reason of a backend failure; None for a refusal of the request (a 4xx,
    a validation error, a context overflow: the client's, not the backend's)."""
    if isinstance(exc, BackendUnavailable):
        return "unavailable"
    if isinstance(exc, BackendStreamBroken):
        return "broken"
    if isinstance(exc, BackendError) and exc.status >= 500 \
            and exc.refusal in ("failed", "backend_overloaded"):
        return "error"
    return None


def _before_first_token(exc: BackendFailure) -> bool:
    """Whether nothing of the answer can have reached the client (a retry is safe)."""
    return not isinstance(exc, BackendStreamBroken) or exc.chunks == 0


class BackendPool:
    """The backends of one model. ``lease()`` for each prompt; ``members`` for health."""

    def __init__(self, model_id: str, model_name: str, backends: Sequence[OpenAIBackend], *,
                 slots: int, metrics: Metrics | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        if not backends:
            raise ValueError(f"model {model_name}: no backend")
        self.model_id = model_id
        self.model_name = model_name
        self.slots = slots
        """Slots of each backend (``concurrentSlots``)."""
        self.clock = clock or time.monotonic
        """Stamps health verdicts (``BackendMonitor`` sets its own)."""
        self._metrics = metrics
        self._turn = itertools.count()
        self.on_down: Callable[[Member], None] | None = None
        """Told when a member goes down (``BackendMonitor`` then probes it until back)."""
        labels = [backend_label(b.base_url) for b in backends]
        self.members = [Member(b, _unique(label, labels[:i]))
                        for i, (b, label) in enumerate(zip(backends, labels, strict=True))]
        if metrics is not None:
            for m in self.members:
                self._watch(metrics, m)

    def _watch(self, metrics: Metrics, member: Member) -> None:
        labels = (self.model_name, member.label)
        member.requests = metrics.backend_requests.labels(*labels)
        metrics.backend_in_flight.labels(*labels).set_function(lambda: member.in_flight)
        metrics.backend_up.labels(*labels).set_function(lambda: 1 if member.up else 0)

    @property
    def base_url(self) -> str:
        """The first backend's base URL (a pool of one is its backend)."""
        return self.members[0].backend.base_url

    @property
    def backends(self) -> list[OpenAIBackend]:
        return [m.backend for m in self.members]

    @property
    def up(self) -> bool:
        """Whether any backend is up as far as we know (no probe here)."""
        return any(m.up for m in self.members)

    # -- choosing -----------------------------------------------------------------------

    def pick(self, exclude: Member | None = None) -> Member | None:
        """The up member with the most free slots, ties in turn. With every member down,
        the least loaded of all (it may be back; refusing would help nobody), unless a
        member is ``exclude``d: a retry goes only to a healthy other (None if none)."""
        others = [m for m in self.members if m is not exclude]
        candidates = [m for m in others if m.up] or ([] if exclude is not None else others)
        if not candidates:
            return None
        most = max(self.slots - m.in_flight for m in candidates)
        best = [m for m in candidates if self.slots - m.in_flight == most]
        return best[next(self._turn) % len(best)]

    def _take(self, member: Member) -> Member:
        member.in_flight += 1
        if member.requests is not None:
            member.requests.inc()
        return member

    @contextlib.contextmanager
    def lease(self) -> Iterator[BackendLease]:
        """A backend for one prompt (and its token counts), freed when the block ends."""
        member = self.pick()
        assert member is not None  # pick() without exclude always finds one
        held = BackendLease(self, self._take(member))
        try:
            yield held
        finally:
            held.member.in_flight -= 1

    def _switch(self, lease: BackendLease) -> bool:
        """Move ``lease`` to another healthy member, if there is one."""
        other = self.pick(exclude=lease.member)
        if other is None:
            return False
        lease.member.in_flight -= 1
        log.info("backend_retry_elsewhere", model=self.model_name,
                 failed=lease.member.label, to=other.label)
        lease.member = self._take(other)
        return True

    # -- health ------------------------------------------------------------------------

    def set_status(self, member: Member, error: str | None) -> BackendStatus:
        """Record ``member``'s health (``error`` None: up); a change is logged, and a
        member going down is handed to ``on_down``."""
        was_up = member.up
        status = BackendStatus(error is None, error, self.clock())
        member.status = status
        if was_up and not status.ok:
            log.warning("backend_down", model=self.model_name, backend=member.label,
                        reason=error)
            if self.on_down is not None:
                self.on_down(member)
        elif status.ok and not was_up:
            log.info("backend_up", model=self.model_name, backend=member.label)
        return status

    def failed(self, member: Member, exc: BackendFailure) -> None:
        """A request of ``member`` failed: counted; a connection failure or a 5xx takes it
        out (a refusal of the request, or a broken stream, does not)."""
        reason = _failure_reason(exc)
        if reason is None:
            return
        if self._metrics is not None:
            self._metrics.backend_failures.labels(self.model_name, member.label, reason).inc()
        if reason == "unavailable":
            self.set_status(member, "unreachable")
        elif isinstance(exc, BackendError) and reason == "error":
            self.set_status(member, f"HTTP {exc.status}")

    def answered(self, member: Member) -> None:
        if not member.up:
            self.set_status(member, None)


def _unique(label: str, before: list[str]) -> str:
    """``label``, numbered when an earlier backend of the model has the same host:port."""
    n = before.count(label)
    return f"{label}#{n + 1}" if n else label


class BackendLease:
    """One prompt's backend, with ``OpenAIBackend``'s interface: an answer that fails
    before its first token is asked once more of another healthy backend, and the token
    counts go to whichever backend answered."""

    def __init__(self, pool: BackendPool, member: Member) -> None:
        self._pool = pool
        self.member = member
        self._retried = False

    @property
    def model_name(self) -> str:
        return self._pool.model_name

    @property
    def backend(self) -> OpenAIBackend:
        return self.member.backend

    @property
    def base_url(self) -> str:
        return self.member.backend.base_url

    def _retry(self, exc: BackendFailure, started: bool) -> bool:
        """Record the failure; True when the request should be asked again elsewhere."""
        self._pool.failed(self.member, exc)
        if started or self._retried or not _before_first_token(exc) \
                or _failure_reason(exc) is None:
            return False
        self._retried = True
        return self._pool._switch(self)

    async def stream_events(self, body: Mapping[str, Any], meter: UsageMeter | None = None,
                            api: PromptApi = "chat") -> AsyncGenerator[list[bytes], None]:
        while True:
            started = False
            try:
                async with contextlib.aclosing(
                        self.member.backend.stream_events(body, meter, api)) as batches:
                    async for batch in batches:
                        started = True
                        yield batch
            except BackendFailure as exc:
                if self._retry(exc, started):
                    continue
                raise
            self._pool.answered(self.member)
            return

    async def complete(self, body: Mapping[str, Any], api: PromptApi) -> JSON:
        while True:
            try:
                reply = await self.member.backend.complete(body, api)
            except BackendFailure as exc:
                if self._retry(exc, False):
                    continue
                raise
            self._pool.answered(self.member)
            return reply

    async def complete_chat(self, body: Mapping[str, Any]) -> JSON:
        return await self.complete(body, "chat")

    async def prompt_tokens(self, body: Mapping[str, Any], api: PromptApi = "chat"
                            ) -> int | None:
        return await self.member.backend.prompt_tokens(body, api)

    async def count_tokens(self, text: str) -> int | None:
        return await self.member.backend.count_tokens(text)
