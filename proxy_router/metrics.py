"""Prometheus metrics of a router (``GET /metrics``): every metric is defined here.

Each router owns one ``Metrics`` with its own ``CollectorRegistry`` (tests run
several routers in one process). Names follow Prometheus conventions: the
``proxy_router_`` prefix, ``_total`` counters, ``_seconds`` histograms, base
units. MOR is counted in **wei** (1 MOR = 10**18 wei), the unit of every amount
in the API and on chain, as a float counter (about 15 significant digits).

Where each fact is measured, never per streamed chunk:

- HTTP requests (both roles): ``middleware``, by method, route *template* and status.
- MOR-RPC requests (provider): ``RpcServer`` calls ``rpc_done``/``rpc_rejected``.
- Reference-wire requests (provider): ``provider.lumerin_wire``, once per request.
- Time to first token and tokens, once per answer: the consumer's ``ChatService``
  (the client's view, session opening included; tokens from the provider's signed
  usage trailer) and the provider's ``session.prompt`` (the backend's view).
- Sessions and MOR: Marketplace events folded by the market index
  (``follow_market``), so a settlement counts whoever sent the transaction.
- Active sessions, index lag and MOR-RPC connections: callback gauges read at
  scrape time (``watch``).
- Backend requests aborted (provider): ``OpenAIBackend``'s abort hook, once per request
  the provider closed before its reply's end (a cancel, a consumer gone).
- Token counts that had to be estimated (provider): ``session.prompt``, once per answer.
- The prompt queue (both roles): the provider's ``CapacityManager`` (waits for one of
  a model's slots) and the consumer's ``ChatService`` (waits for a turn on a session),
  as each prompt leaves the queue.
- Waits for a pooled HTTP connection (``backend``: the provider's model servers;
  ``chain``: the RPC node): aiohttp's connection-queued trace hooks (``pool_trace``),
  once per request that found its pool's limit reached, also logged (at most once per
  10 s per pool), so a cap never queues silently.
- Per backend of a model (provider): ``BackendPool``, once per request sent and as a
  backend goes down or up; in-flight requests are read at scrape time.
- Connections the HTTP servers refused (their per-address or total cap): read from
  ``netguard.ConnectionGuard``'s counters at scrape time (``watch_connection_guard``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from proxy_router.chain.events import MarketEvent
from proxy_router.chain.index import MarketIndex
from proxy_router.chain.types import same_address
from proxy_router.ratelimit import RateLimiter

log = structlog.get_logger(__name__)

Role = Literal["consumer", "provider"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Methods get their own label value; anything else is "other" (bounded cardinality).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
CLIENT_GONE = 499  # nginx's code for "the client closed the connection first"
CLIENT_LEFT = web.RequestKey("client_left", bool)
"""Set by a handler that returns normally after its client went away (a closed stream)."""
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0)
QUEUE_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
REFUSED_OUTCOMES = frozenset({"full", "timeout"})
POOL_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LIMIT_LOG_INTERVAL_S = 10.0
"""A connection pool that keeps being full is logged once per this many seconds."""


class Metrics:
    def __init__(self, role: Role) -> None:
        self.role = role
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "proxy_router_http_requests_total",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"], registry=r)
        self.http_duration = Histogram(
            "proxy_router_http_request_duration_seconds",
            "HTTP request duration until the response is complete (a stream's whole length)",
            ["method", "route"], buckets=DURATION_BUCKETS, registry=r)
        self.rpc_requests = Counter(
            "proxy_router_rpc_requests_total",
            "MOR-RPC requests served, by method and result code (OK or the error code)",
            ["method", "code"], registry=r)
        self.rpc_duration = Histogram(
            "proxy_router_rpc_request_duration_seconds",
            "MOR-RPC request duration until the final frame (a stream's whole length)",
            ["method"], buckets=DURATION_BUCKETS, registry=r)
        self.reference_requests = Counter(
            "proxy_router_reference_rpc_requests_total",
            "Requests served over the reference's raw-TCP MOR-RPC wire (provider), by method "
            "and result code (OK, PEER_GONE or the error code)",
            ["method", "code"], registry=r)
        self.rpc_rejected = Counter(
            "proxy_router_rpc_frames_rejected_total",
            "MOR-RPC frames refused before any handler ran (bad signature, stale, replayed...)",
            ["code"], registry=r)
        self.ttft = Histogram(
            "proxy_router_time_to_first_token_seconds",
            "Time to the first streamed chunk: from the client's request at the consumer "
            "(session opening included), from the accepted prompt at the provider",
            ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.tokens = Counter(
            "proxy_router_tokens_total",
            "Tokens of completed answers as measured by the provider, by model and type "
            "(prompt = in, completion = out)",
            ["model", "type"], registry=r)
        self.backend_aborts = Counter(
            "proxy_router_backend_requests_aborted_total",
            "Backend requests the provider closed before their reply's end, so that the "
            "model server stops generating (the consumer cancelled or went away), by model",
            ["model"], registry=r)
        self.usage_estimated = Counter(
            "proxy_router_usage_estimated_total",
            "Answers whose prompt or completion token count is an estimate (the backend "
            "neither reported nor counted it), by model and type",
            ["model", "type"], registry=r)
        party = "this wallet" if role == "consumer" else "this provider"
        self.sessions_opened = Counter(
            "proxy_router_sessions_opened_total", f"Sessions opened on chain for {party}",
            registry=r)
        self.sessions_closed = Counter(
            "proxy_router_sessions_closed_total",
            f"Sessions of {party} settled on chain, by whether the close was disputed",
            ["disputed"], registry=r)
        if role == "consumer":
            self.mor = Counter(
                "proxy_router_spent_mor_wei_total",
                "MOR (in wei) this wallet paid for sessions settled on chain",
                registry=r)
        else:
            self.mor = Counter(
                "proxy_router_earned_mor_wei_total",
                "MOR (in wei) paid out to this provider: settled sessions and claimed "
                "disputed shares", registry=r)
        self.sessions_active = Gauge(
            "proxy_router_sessions_active", f"Open sessions of {party}", registry=r)
        self.index_lag = Gauge(
            "proxy_router_index_lag_blocks",
            "Blocks between the chain head and the market index's checkpoint", registry=r)
        self.rpc_connections = Gauge(
            "proxy_router_rpc_connections", "Open MOR-RPC connections", registry=r)
        slot = "one of the model's prompt slots" if role == "provider" \
            else "a turn on its session"
        self.prompt_queue = Gauge(
            "proxy_router_prompt_queue_depth", f"Prompts waiting for {slot}, by model",
            ["model"], registry=r)
        self.prompt_queue_wait = Histogram(
            "proxy_router_prompt_queue_wait_seconds",
            f"How long a prompt waited for {slot} (0 when one was free), by model and how "
            "it left the queue (served, timeout, cancelled)",
            ["model", "outcome"], buckets=QUEUE_BUCKETS, registry=r)
        self.prompt_queue_refused = Counter(
            "proxy_router_prompt_queue_refused_total",
            "Prompts refused with a 429 and Retry-After, by model and reason (full: the "
            "queue was full; timeout: the longest wait ran out)",
            ["model", "reason"], registry=r)
        self.pool_waits = Counter(
            "proxy_router_http_pool_waits_total",
            "Outgoing HTTP requests that waited for a pooled connection because the pool's "
            "limit was reached, by pool (backend: model servers; chain: the RPC node)",
            ["pool"], registry=r)
        self.pool_wait = Histogram(
            "proxy_router_http_pool_wait_seconds",
            "How long a request waited for a pooled connection, by pool",
            ["pool"], buckets=POOL_WAIT_BUCKETS, registry=r)
        self.backend_requests = Counter(
            "proxy_router_backend_requests_total",
            "Requests sent to each backend of a model (prompts, retries included), by model "
            "and backend (host:port)", ["model", "backend"], registry=r)
        self.backend_failures = Counter(
            "proxy_router_backend_failures_total",
            "Backend requests that failed, by model, backend and reason (unavailable: no "
            "answer; error: an HTTP 5xx; broken: the stream broke off)",
            ["model", "backend", "reason"], registry=r)
        self.backend_in_flight = Gauge(
            "proxy_router_backend_in_flight",
            "Prompts running on each backend of a model", ["model", "backend"], registry=r)
        self.backend_up = Gauge(
            "proxy_router_backend_up",
            "1 while a backend takes prompts, 0 while it is out (a failure took it out; its "
            "next answered probe puts it back)", ["model", "backend"], registry=r)
        self._limit_log = RateLimiter(1 / LIMIT_LOG_INTERVAL_S, burst=1)
        """One warning per pool per 10 s."""

    # -- wiring ---------------------------------------------------------------------------

    def watch(self, *, index: MarketIndex, active_sessions: Callable[[], int],
              rpc_connections: Callable[[], int]) -> None:
        """Gauges computed at scrape time from the router's own state."""
        self.index_lag.set_function(lambda: index.lag_blocks)
        self.sessions_active.set_function(active_sessions)
        self.rpc_connections.set_function(rpc_connections)

    def watch_connection_guard(self, refused: Callable[[], dict[str, int]]) -> None:
        """``refused()``: connections an HTTP server refused so far, by cap."""
        self.registry.register(_RefusedConnections(refused))

    def pool_trace(self, pool: str) -> aiohttp.TraceConfig:
        """A trace config for a ``ClientSession`` whose waits for a pooled connection are
        counted, timed and logged as ``pool``'s: a full pool must never queue silently."""
        trace = aiohttp.TraceConfig()

        async def queued(session: aiohttp.ClientSession, ctx: Any, _: Any) -> None:
            ctx.pool_queued_at = time.perf_counter()
            self.pool_waits.labels(pool).inc()
            if self._limit_log.allow(pool):
                connector = session.connector
                log.warning("http_pool_limit_reached", pool=pool,
                            limit=getattr(connector, "limit", None),
                            limit_per_host=getattr(connector, "limit_per_host", None))

        async def dequeued(_: aiohttp.ClientSession, ctx: Any, __: Any) -> None:
            started = getattr(ctx, "pool_queued_at", None)
            if started is not None:
                self.pool_wait.labels(pool).observe(time.perf_counter() - started)

        trace.on_connection_queued_start.append(queued)
        trace.on_connection_queued_end.append(dequeued)
        return trace

    def follow_market(self, index: MarketIndex, address: str) -> None:
        """Count sessions and MOR from Marketplace events that concern ``address``
        (as the user on a consumer, as the provider on a provider)."""
        consumer = self.role == "consumer"

        def ours(event: MarketEvent) -> bool:
            party = event.user if consumer else event.provider
            if party is None:
                session = index.sessions.get(event.session_id or "")
                party = None if session is None else session.user if consumer \
                    else session.provider
            return same_address(party, address)

        def on_event(event: MarketEvent) -> None:
            if event.name not in {"SessionOpened", "SessionSettled", "ProviderClaimed"} \
                    or not ours(event):
                return
            if event.name == "SessionOpened":
                self.sessions_opened.inc()
            elif event.name == "SessionSettled":
                self.sessions_closed.labels(str(event.disputed).lower()).inc()
                # The user pays the provider's whole share; a disputed share reaches the
                # provider later, by ProviderClaimed.
                self.mor.inc(event.provider_earned if consumer
                             else event.provider_earned - event.held)
            elif not consumer:
                self.mor.inc(event.amount)

        index.subscribe(on_event)

    # -- observations -------------------------------------------------------------------------

    def observe_answer(self, model: str, *, ttft_s: float | None,
                       usage: dict[str, Any] | None) -> None:
        """One answer: its time to first token (streams only) and its token counts."""
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        if usage:
            self.tokens.labels(model, "prompt").inc(int(usage.get("prompt_tokens") or 0))
            self.tokens.labels(model, "completion").inc(
                int(usage.get("completion_tokens") or 0))

    def backend_aborted(self, model: str) -> None:
        """The provider closed a backend request of ``model`` before its reply ended."""
        self.backend_aborts.labels(model).inc()

    def estimated(self, model: str, kinds: tuple[str, ...]) -> None:
        """An answer's ``kinds`` (``prompt``, ``completion``) counts are estimates."""
        for kind in kinds:
            self.usage_estimated.labels(model, kind).inc()

    def prompt_queue_depth(self, model: str, depth: int) -> None:
        """The model's queue now holds ``depth`` waiting prompts."""
        self.prompt_queue.labels(model).set(depth)

    def prompt_queue_left(self, model: str, waited_s: float, outcome: str) -> None:
        """A prompt left the queue after ``waited_s``: ``served``, ``cancelled``, or
        refused (``full``, ``timeout``)."""
        if outcome in REFUSED_OUTCOMES:
            self.prompt_queue_refused.labels(model, outcome).inc()
        if outcome != "full":
            self.prompt_queue_wait.labels(model, outcome).observe(waited_s)

    def rpc_done(self, method: str, code: str, seconds: float) -> None:
        self.rpc_requests.labels(method, code).inc()
        self.rpc_duration.labels(method).observe(seconds)

    def rpc_frame_rejected(self, code: str) -> None:
        self.rpc_rejected.labels(code).inc()

    # -- HTTP ---------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            # a stream whose client left is returned, not raised (no traceback): still a 499
            status = CLIENT_GONE if request.get(CLIENT_LEFT) else response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            status = CLIENT_GONE
            raise
        finally:
            method = request.method if request.method in METHODS else "other"
            route = route_template(request)
            self.http_requests.labels(method, route, str(status)).inc()
            if status != 101:  # a WebSocket's "duration" is the connection's lifetime
                self.http_duration.labels(method, route).observe(
                    time.perf_counter() - started)

    async def handler(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE})


class _RefusedConnections(Collector):
    """``proxy_router_http_connections_refused_total``, read from a server's guard."""

    def __init__(self, refused: Callable[[], dict[str, int]]) -> None:
        self._refused = refused

    def collect(self) -> Any:
        family = CounterMetricFamily(
            "proxy_router_http_connections_refused",
            "Connections the HTTP server aborted as they opened, by cap (max_per_remote: "
            "the remote address held MAX_CONNECTIONS_PER_IP; max_total: MAX_CONNECTIONS)",
            labels=["cap"])
        for cap, count in self._refused().items():
            family.add_metric([cap], count)
        yield family


def route_template(request: web.Request) -> str:
    """The matched route's path template (``/blockchain/sessions/{session}``), never the
    raw path, so ids do not become label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED
