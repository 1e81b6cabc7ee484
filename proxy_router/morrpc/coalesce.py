"""One socket write per loop iteration for the many streams of one WebSocket.

A provider answering hundreds of streams on one consumer's socket sends a chunk frame
per token per stream; each ``send_str`` is a ``transport.write``, i.e. a ``send``
system call. The streams whose backends answered in the same iteration of the event
loop send in the same iteration, so their frames can leave in one ``writev``: the
frames are queued and handed to the transport by one callback at the end of the
iteration (``call_soon``: no timer, no added wait).

Only complete, small, unmasked text frames are queued; anything else (a close, a
ping, a large frame written in two parts) first flushes the queue and is written at
once, so frames keep their order and a close is never left behind in the queue.
"""

from __future__ import annotations

import asyncio
from typing import Any

_TEXT_FIN = 0x81  # FIN + opcode 1 (text), no RSV bits (no compression)
_MAX_QUEUED = 256 * 1024
"""Bytes queued before an early flush: a burst never holds much outside the transport."""


def _small_text_frame(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is exactly one unmasked text frame (aiohttp writes a small frame's
    header and payload in one write)."""
    if len(data) < 2 or data[0] != _TEXT_FIN or data[1] & 0x80:
        return False
    length = data[1]
    if length < 126:
        return len(data) == 2 + length
    if length == 126:
        return len(data) >= 4 and len(data) == 4 + int.from_bytes(data[2:4], "big")
    return False


class CoalescingTransport:
    """Stands in for a transport in aiohttp's ``WebSocketWriter``: queues small text
    frames and writes them together once per loop iteration; everything else of the
    transport is the real one's."""

    __slots__ = ("_loop", "_queue", "_queued", "_scheduled", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._queue: list[bytes | bytearray | memoryview] = []
        self._queued = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not _small_text_frame(data):
            self.flush()
            self._transport.write(data)
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued >= _MAX_QUEUED:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, lines: Any) -> None:
        self.flush()
        self._transport.writelines(lines)

    def flush(self) -> None:
        """Hand what is queued to the transport (one ``writev`` for all of it)."""
        self._scheduled = False
        if not self._queue:
            return
        queue, self._queue, self._queued = self._queue, [], 0
        if not self._transport.is_closing():
            self._transport.writelines(queue)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalesce_writes(ws: Any) -> bool:
    """Make a prepared ``WebSocketResponse`` coalesce its frames; False (and nothing
    changed) when this aiohttp's writer does not look as expected."""
    writer = getattr(ws, "_writer", None)
    transport = getattr(writer, "transport", None)
    if writer is None or getattr(writer, "compress", None) != 0 or not all(
            callable(getattr(transport, name, None))
            for name in ("write", "writelines", "is_closing")):
        return False  # uvloop's transports are no asyncio.Transport subclass: by duck type
    writer.transport = CoalescingTransport(transport)
    return True
