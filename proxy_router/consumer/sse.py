"""Stream chunks from the provider as the client's `text/event-stream` bytes.

A provider sends each stream chunk as ready-to-write SSE bytes (MOR-RPC version 1 has
no other chunk format): one or more ``data: <json>\\n\\n`` events (every event one
backend read brought), each JSON on one line. The consumer writes them to the client as
they are; the only per-chunk work is a byte search for ``"usage"``, which is rare (the
last event of a stream), and ``checked_sse``'s prefix check. ``ClientEvents`` does that
from the MOR-RPC reader itself (``RpcStream.relay``), writing to the client's connection
in the loop iteration the provider's frame arrived in.
"""

from __future__ import annotations

from typing import Any

from aiohttp import hdrs, web

from proxy_router import bounded_json
from proxy_router.morrpc.errors import ErrorCode, RpcError
from proxy_router.morrpc.protocol import MAX_FRAME_BYTES

_PREFIX = b"data: "
_END = b"\n\n"
USAGE_KEY = b'"usage"'


def checked_sse(chunk: bytes) -> bytes:
    """The chunk, if it is SSE; anything else would corrupt the client's event stream."""
    if not chunk.startswith(_PREFIX):
        raise RpcError(ErrorCode.BACKEND_ERROR, "provider sent a stream chunk that is not SSE")
    return chunk


def _event(raw: bytes) -> dict[str, Any] | None:
    """One ``data: <json>`` event (no trailing blank line) parsed, or None."""
    try:
        doc = bounded_json.loads(raw[5:], max_bytes=MAX_FRAME_BYTES)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def filter_usage(chunk: bytes, keep_usage_only: bool) -> tuple[bytes, bool]:
    """Handle the events of an SSE chunk that mention ``"usage"``.

    Returns the chunk to write, without the usage-only events (``choices`` empty) unless
    ``keep_usage_only``, and whether an event carried a usage object. Events that merely
    say ``"usage":null`` are kept as they are. Call it only when ``USAGE_KEY in chunk``.
    """
    events = chunk.split(_END)
    tail = events.pop()  # b"" for a well-formed chunk
    saw = False
    kept: list[bytes] = []
    for raw in events:
        if USAGE_KEY in raw:
            event = _event(raw)
            if event is not None and isinstance(event.get("usage"), dict):
                saw = True
                if not keep_usage_only and not event.get("choices"):
                    continue
        kept.append(raw)
    if len(kept) == len(events):
        return chunk, saw
    out = b"".join(raw + _END for raw in kept)
    return (out + tail if tail else out), saw


def for_client(chunk: bytes, include_usage: bool) -> tuple[bytes, bool]:
    """A provider chunk as the client's bytes (maybe none), and whether it carried a
    usage object: the one per-chunk step of every streamed answer."""
    chunk = checked_sse(chunk)
    if USAGE_KEY in chunk:  # rare: the stream's last event
        return filter_usage(chunk, include_usage)
    return chunk, False


def first_event(chunk: bytes) -> dict[str, Any]:
    """The first event of an SSE chunk, parsed ({} if it is not a JSON object)."""
    end = chunk.find(_END)
    return _event(chunk if end < 0 else chunk[:end]) or {}


class ClientEvents:
    """A prepared streaming response as a ``ChunkSink``: each provider chunk is checked
    and written straight to the client's transport, framed as HTTP/1.1 chunked encoding
    when the response is (aiohttp's own ``write`` is a coroutine, which the socket's
    reader cannot await). Usage-only events are dropped unless the client asked for
    them (``include_usage``); ``saw_usage`` says whether one came.

    Bytes written here bypass aiohttp's writer, whose headers went out with the first
    ``write`` (the stream's opening chunks) and which still ends the stream
    (``write_eof``); only its byte count (access log) misses them."""

    __slots__ = ("_chunked", "_request", "include_usage", "saw_usage")

    def __init__(self, request: web.Request, resp: web.StreamResponse, *,
                 include_usage: bool) -> None:
        if not resp.prepared or resp.compression:
            raise ValueError("ClientEvents needs a prepared, uncompressed response")
        self._request = request
        self._chunked = resp.headers.get(hdrs.TRANSFER_ENCODING) == "chunked"
        self.include_usage = include_usage
        self.saw_usage = False

    def write(self, chunk: bytes) -> bool:
        chunk, saw = for_client(chunk, self.include_usage)
        if saw:
            self.saw_usage = True
        if not chunk:
            return True
        transport = self._request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the stream")
        transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk)
        return transport.get_write_buffer_size() <= CLIENT_BUFFER_BYTES

    async def drain(self) -> None:
        await self._request.writer.drain()


CLIENT_BUFFER_BYTES = 64 * 1024
"""Bytes waiting for a slow client before its stream's credit is held back (asyncio's
default high-water mark, where aiohttp's own writer would wait too)."""
