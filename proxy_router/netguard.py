"""Connection hygiene for the routers' HTTP servers: caps, header and body deadlines.

Both routers listen on networks where a peer may be hostile. Without limits a
single host can hold thousands of idle sockets (file descriptors and memory) or
trickle request headers forever (slowloris). aiohttp itself only has a
keep-alive timer, so ``serve_app`` adds, on the low-level ``web.Server`` that an
``AppRunner`` creates:

- at most ``max_per_remote`` open connections per remote IP and ``max_total``
  in all: a connection over either cap is aborted as soon as it is accepted (and a
  warning logged, at most once per 10 s per cap). Loopback peers are exempt from the
  per-IP cap, not from the total: a local process can already do anything the API
  allows, and the cap protects a public listener from one remote host, not a local
  app that runs 256 streams through its consumer;
- a deadline for the first request's headers (``header_timeout_s``);
- aiohttp's keep-alive timer (``keepalive_timeout_s``), which in aiohttp 3.14
  runs from the moment a connection opens and closes it while no complete
  request has arrived, so idle and half-sent keep-alive requests are closed too.

Request bodies are bounded by ``read_body`` in the handlers that read one.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from proxy_router.ratelimit import RateLimiter

if TYPE_CHECKING:
    from proxy_router.config import Settings
    from proxy_router.dualport import RawHandler

log = structlog.get_logger(__name__)

CAP_LOG_INTERVAL_S = 10.0
BODY_TIMEOUT_TEXT = "request body not received in time"


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections a server keeps open, and how long it waits for a request."""

    max_per_remote: int = 32
    max_total: int = 1024
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 30.0
    body_timeout_s: float = 30.0
    exempt_loopback: bool = True
    """Loopback peers are not held to ``max_per_remote`` (they still count toward
    ``max_total``): a local process can already do anything the API allows, and the cap
    protects a public listener from one remote host. False in tests of the cap itself."""

    def __post_init__(self) -> None:
        if self.max_per_remote < 1 or self.max_total < 1:
            raise ValueError("connection caps must be at least 1")
        if min(self.header_timeout_s, self.keepalive_timeout_s, self.body_timeout_s) <= 0:
            raise ValueError("HTTP timeouts must be positive")

    def over_per_remote(self, remote: str, open_now: int) -> bool:
        """Whether ``remote``, holding ``open_now`` connections, may open no other."""
        return open_now >= self.max_per_remote and not (
            self.exempt_loopback and is_loopback(remote))

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(max_per_remote=settings.max_connections_per_ip,
                   max_total=settings.max_connections,
                   header_timeout_s=settings.http_header_timeout_s,
                   keepalive_timeout_s=settings.http_keepalive_timeout_s,
                   body_timeout_s=settings.http_body_timeout_s)


def remote_key(transport: asyncio.BaseTransport) -> str:
    """The peer's IP as the cap counts it (an IPv4-mapped IPv6 address is its IPv4).

    A peer without an IP (a Unix socket) counts under ``""``.
    """
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple | list) or not peer:
        return ""
    host = str(peer[0])
    try:
        addr = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@functools.lru_cache(maxsize=1024)
def is_loopback(remote: str) -> bool:
    """Whether ``remote`` (a ``remote_key``) is this host: exempt from the per-IP cap."""
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


class ConnectionGuard:
    """Enforces ``ConnectionLimits`` on one ``web.Server`` by wrapping its hooks.

    ``web.Server.connection_made``/``connection_lost`` are called by every
    ``RequestHandler`` (the per-connection protocol) when its socket opens and
    closes, and ``request_factory`` when a request's headers are complete; the
    guard replaces them on the instance and calls the originals.
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.per_remote: dict[str, int] = {}
        """Open connections by remote IP; an IP without one has no entry."""
        self.refused_per_remote = 0
        self.refused_total = 0
        self.header_timeouts = 0
        self._cap_log = RateLimiter(1 / CAP_LOG_INTERVAL_S, burst=1)
        self._remotes: dict[RequestHandler, str] = {}
        self._timers: dict[RequestHandler, asyncio.TimerHandle] = {}

    @property
    def open_connections(self) -> int:
        return len(self._remotes)

    def refused(self) -> dict[str, int]:
        """Connections refused so far, by cap (for ``/metrics``)."""
        return {"max_per_remote": self.refused_per_remote, "max_total": self.refused_total}

    def install(self, server: web.Server) -> None:
        """Wrap ``server``'s hooks; call before the server accepts its first connection."""
        if server in _GUARDS:
            raise RuntimeError("this server already has a connection guard")
        made, lost = server.connection_made, server.connection_lost
        factory = server.request_factory

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            if self._admit(handler, transport):
                made(handler, transport)

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            self._release(handler)
            lost(handler, exc)

        def request_factory(message: Any, payload: Any, protocol: RequestHandler,
                            *args: Any) -> Any:
            timer = self._timers.pop(protocol, None)
            if timer is not None:
                timer.cancel()
            return factory(message, payload, protocol, *args)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        server.request_factory = request_factory
        _GUARDS[server] = self

    def _admit(self, handler: RequestHandler, transport: asyncio.Transport) -> bool:
        remote = remote_key(transport)
        if len(self._remotes) >= self.limits.max_total:
            self.refused_total += 1
            return self._refuse(transport, remote, "max_total")
        if self.limits.over_per_remote(remote, self.per_remote.get(remote, 0)):
            self.refused_per_remote += 1
            return self._refuse(transport, remote, "max_per_remote")
        self._remotes[handler] = remote
        self.per_remote[remote] = self.per_remote.get(remote, 0) + 1
        loop = asyncio.get_running_loop()
        self._timers[handler] = loop.call_later(self.limits.header_timeout_s,
                                                self._header_late, handler)
        return True

    def _refuse(self, transport: asyncio.Transport, remote: str, cap: str) -> bool:
        # Abort on the next loop turn, not now: on Python 3.11 the handler's start()
        # task is created after this hook returns, and a connection_lost delivered
        # before that task first runs makes it fail an assertion inside aiohttp.
        log.debug("connection_refused", remote=remote, cap=cap)
        if self._cap_log.allow(cap):
            log.warning("http_connection_cap_reached", cap=cap, remote=remote,
                        limit=getattr(self.limits, cap))
        asyncio.get_running_loop().call_soon(transport.abort)
        return False

    def _header_late(self, handler: RequestHandler) -> None:
        self._timers.pop(handler, None)
        self.header_timeouts += 1
        log.debug("http_header_timeout", remote=self._remotes.get(handler))
        handler.force_close()

    def _release(self, handler: RequestHandler) -> None:
        timer = self._timers.pop(handler, None)
        if timer is not None:
            timer.cancel()
        remote = self._remotes.pop(handler, None)
        if remote is None:
            return  # refused: never counted
        left = self.per_remote[remote] - 1
        if left:
            self.per_remote[remote] = left
        else:
            del self.per_remote[remote]


_GUARDS: weakref.WeakKeyDictionary[web.Server, ConnectionGuard] = weakref.WeakKeyDictionary()


def guard_of(runner: web.BaseRunner) -> ConnectionGuard | None:
    """The guard ``serve_app`` installed on ``runner``'s server (for tests and metrics)."""
    server = runner.server
    return None if server is None else _GUARDS.get(server)


class _PeerMalformedRequest(logging.Filter):
    """Drop aiohttp's "Error handling request" traceback for a request its parser refused
    (a NUL in the request line, a bad header): the peer already got a 400, and one line
    of traceback per malformed request would let anyone flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


_MALFORMED_FILTER = _PeerMalformedRequest()


async def serve_app(app: web.Application, host: str, port: int,
                    limits: ConnectionLimits | None = None, *, shutdown_timeout: float = 5.0,
                    handle_signals: bool = False,
                    raw: RawHandler | None = None) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` with ``limits``; returns the runner and the bound port.

    ``port`` 0 binds any free port. The caller owns the runner (``await runner.cleanup()``).
    ``raw`` also serves, on the same port, connections that open with a JSON object
    (the reference's MOR-RPC wire, see ``dualport``).
    """
    from proxy_router.dualport import DualSite
    limits = limits or ConnectionLimits()
    server_log = logging.getLogger("aiohttp.server")
    if _MALFORMED_FILTER not in server_log.filters:
        server_log.addFilter(_MALFORMED_FILTER)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=limits.keepalive_timeout_s,
                           shutdown_timeout=shutdown_timeout, handle_signals=handle_signals)
    await runner.setup()
    try:
        server = runner.server
        assert server is not None  # set by setup()
        ConnectionGuard(limits).install(server)
        site = web.TCPSite(runner, host, port) if raw is None else \
            DualSite(runner, host, port, raw, limits)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses = runner.addresses
    bound = int(addresses[0][1]) if addresses else port
    return runner, bound


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """``request.read()``, but a client that trickles its body gets 408 after ``timeout_s``.

    Without a deadline a slow upload holds a handler (and its connection) forever.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=BODY_TIMEOUT_TEXT) from None

