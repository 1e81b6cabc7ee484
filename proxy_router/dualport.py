"""One listening port, two wires: HTTP (our ``mor-rpc/1`` WebSocket, health, metrics)
and the Morpheus-Lumerin reference's raw-TCP JSON.

A provider registers one endpoint on chain, and both kinds of consumer dial it: Go
proxy-routers and MorpheusUI write a JSON object at once (``{``), our consumers and
any HTTP client send a request line (a letter). The first byte decides, so neither
side needs to know in advance which peer it has; the HTTP side keeps every limit
``netguard`` puts on it, and the raw side gets the same caps and first-byte deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import cast

import structlog
from aiohttp import web

from proxy_router.netguard import ConnectionLimits, remote_key

log = structlog.get_logger(__name__)

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]
"""Serves one raw connection: its reader and writer, and the bytes already read."""
READ_LIMIT = 64 * 1024  # the StreamReader buffer of a raw connection


class _Raw:
    """Open raw connections, capped like the HTTP ones, and their tasks."""

    def __init__(self, handler: RawHandler, limits: ConnectionLimits) -> None:
        self.handler = handler
        self.limits = limits
        self.per_remote: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def admit(self, remote: str) -> bool:
        if len(self.tasks) >= self.limits.max_total or \
                self.limits.over_per_remote(remote, self.per_remote.get(remote, 0)):
            return False
        self.per_remote[remote] = self.per_remote.get(remote, 0) + 1
        return True

    def start(self, transport: asyncio.Transport, first: bytes, remote: str) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        task = loop.create_task(self._serve(reader, writer, first, remote))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     first: bytes, remote: str) -> None:
        try:
            await self.handler(reader, writer, first)
        except Exception:
            log.exception("raw_connection_failed", remote=remote)
        finally:
            writer.close()
            left = self.per_remote.get(remote, 1) - 1
            if left > 0:
                self.per_remote[remote] = left
            else:
                self.per_remote.pop(remote, None)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


class _FirstByte(asyncio.Protocol):
    """Holds a new connection until its first non-blank byte, then hands it over."""

    def __init__(self, http: web.Server, raw: _Raw) -> None:
        self.http = http
        self.raw = raw
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no ``asyncio.Transport`` subclass, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        self.timer = asyncio.get_running_loop().call_later(
            self.raw.limits.header_timeout_s, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        head = self.buffer.lstrip()
        if not head:
            if len(self.buffer) > READ_LIMIT:
                self.transport.abort()
            return
        if self.timer is not None:
            self.timer.cancel()
        transport, first = self.transport, self.buffer
        if head[:1] == b"{":
            remote = remote_key(transport)
            if not self.raw.admit(remote):
                log.debug("raw_connection_refused", remote=remote)
                transport.abort()
                return
            self.raw.start(transport, first, remote)
            return
        handler = self.http()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(first)

    def eof_received(self) -> bool | None:
        return False  # closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


class DualSite(web.TCPSite):
    """A ``TCPSite`` whose connections may also speak the raw JSON wire."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, raw: RawHandler,
                 limits: ConnectionLimits) -> None:
        super().__init__(runner, host, port)
        self._raw = _Raw(raw, limits)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert isinstance(server, web.Server)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _FirstByte(server, self._raw), self._host, self._port,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)

    async def stop(self) -> None:
        await self._raw.close()
        await super().stop()

    @property
    def raw_connections(self) -> int:
        return len(self._raw.tasks)
