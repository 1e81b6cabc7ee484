"""The reference's transport: raw TCP, one request per connection, JSON back-to-back.

What the Go side does (``tcphandlers/tcp.go``, ``proxy_sender.go``):

* the consumer dials, writes one ``json.Marshal``-ed request (no newline) and
  reads with a ``json.Decoder`` until ``io.EOF``;
* the provider decodes exactly one request with a ``json.Decoder``, writes each
  response as soon as it is ready (again no separator), and closes the connection
  when the handler returns — **EOF ends the stream**; a failure appends one
  unsigned error object before the close; an undecodable request gets no answer;
* ``json.Decoder`` skips whitespace between values, so a reader must too.

``JsonObjectSplitter`` cuts such a byte stream into objects without parsing it
recursively; ``bounded_json`` parses each one. Every buffer, object and stream is
capped (``LumerinLimits``), and a peer that breaks a cap or a deadline is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from proxy_router import bounded_json

from ..errors import ErrorCode, RpcError, RpcTimeout, RpcUnavailable
from .gojson import GoStruct
from .messages import (
    Request,
    Response,
    error_response,
    parse_request,
    parse_response,
    request_id_of,
)

log = structlog.get_logger(__name__)

P = TypeVar("P", bound=GoStruct)
Handler = Callable[[Request[Any]], AsyncIterator[Response[Any]]]
"""A provider's method handler: yields the responses of one request (then EOF)."""

_WS = b" \t\r\n"
_STRUCTURAL = re.compile(rb'[{}\[\]"]')
_IN_STRING = re.compile(rb'["\\]')
_NON_WS = re.compile(rb"[^ \t\r\n]")
_READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class LumerinLimits:
    """Caps on what a peer may send (the reference itself has none)."""

    max_request_bytes: int = 16 << 20
    """Largest request object a provider reads (prompts may carry base64 images)."""
    max_response_bytes: int = 16 << 20
    """Largest single response object a consumer reads."""
    max_stream_objects: int = 262_144
    """Most response objects in one stream (one per token of a long completion)."""
    max_stream_bytes: int = 1 << 30
    """Most bytes in one response stream."""
    max_depth: int = 128
    """Deepest nesting accepted before parsing (orjson's own limit is 1024)."""


class JsonObjectSplitter:
    """Cuts a byte stream into consecutive top-level JSON objects (whitespace allowed
    between them), without recursion; each object is still to be parsed.

    Raises ``BAD_REQUEST`` for a top-level value that is not an object or nests
    deeper than ``max_depth``, ``PAYLOAD_TOO_LARGE`` for one past ``max_object_bytes``.
    """

    __slots__ = ("_buf", "_depth", "_escape", "_in_string", "_max", "_max_depth", "_pos",
                 "_start")

    def __init__(self, max_object_bytes: int, max_depth: int = 128) -> None:
        self._buf = bytearray()
        self._max = max_object_bytes
        self._max_depth = max_depth
        self._pos = 0  # next byte to scan
        self._start = -1  # start of the object being scanned, -1 between objects
        self._depth = 0
        self._in_string = False
        self._escape = False

    @property
    def pending(self) -> bool:
        """True while part of an object is buffered (EOF now would truncate it)."""
        return self._start >= 0 or bool(self._buf.strip(_WS))

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the objects they completed, in order."""
        self._buf += data
        out: list[bytes] = []
        while True:
            obj = self._scan()
            if obj is None:
                break
            out.append(obj)
        if self._start >= 0 and len(self._buf) - self._start > self._max:
            raise RpcError(ErrorCode.PAYLOAD_TOO_LARGE,
                           f"JSON object exceeds the limit of {self._max} bytes")
        return out

    def _scan(self) -> bytes | None:
        buf = self._buf
        if self._start < 0:
            m = _NON_WS.search(buf, self._pos)
            if m is None:
                buf.clear()
                self._pos = 0
                return None
            pos = m.start()
            if buf[pos] != 0x7B:  # "{"
                raise RpcError(ErrorCode.BAD_REQUEST, "expected a JSON object")
            del buf[:pos]
            self._start, self._pos, self._depth = 0, 1, 1
        pos = self._pos
        while True:
            if self._in_string:
                if self._escape:
                    if pos >= len(buf):
                        break
                    self._escape = False
                    pos += 1
                    continue
                m = _IN_STRING.search(buf, pos)
                if m is None:
                    pos = len(buf)
                    break
                pos = m.end()
                if m.group() == b"\\":
                    self._escape = True
                else:
                    self._in_string = False
                continue
            m = _STRUCTURAL.search(buf, pos)
            if m is None:
                pos = len(buf)
                break
            pos = m.end()
            ch = m.group()
            if ch == b'"':
                self._in_string = True
            elif ch in (b"{", b"["):
                self._depth += 1
                if self._depth > self._max_depth:
                    raise RpcError(ErrorCode.BAD_REQUEST, "JSON nested too deep")
            else:
                self._depth -= 1
                if self._depth == 0:
                    obj = bytes(buf[:pos])
                    if len(obj) > self._max:
                        raise RpcError(ErrorCode.PAYLOAD_TOO_LARGE,
                                       f"JSON object exceeds the limit of {self._max} bytes")
                    del buf[:pos]
                    self._start, self._pos = -1, 0
                    return obj
        self._pos = pos
        return None


def parse_object(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """One split-off object → dict; ``BAD_REQUEST`` when it is not valid JSON."""
    try:
        obj = bounded_json.loads(raw, max_bytes=max_bytes)
    except bounded_json.JsonTooLarge as exc:
        raise RpcError(ErrorCode.PAYLOAD_TOO_LARGE, str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RpcError(ErrorCode.BAD_REQUEST, f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RpcError(ErrorCode.BAD_REQUEST, "expected a JSON object")
    return obj


def looks_like_lumerin(first: bytes) -> bool:
    """Does a connection that starts with ``first`` speak this wire? (a JSON object;
    HTTP and WebSocket start with a method name)."""
    return first.lstrip(_WS)[:1] == b"{"


def _keepalive(writer: asyncio.StreamWriter) -> None:
    """TCP keep-alive every 10 s, as both Go ends set (idle NATs drop long prompts)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 5)


# -- consumer ----------------------------------------------------------------------------
async def lumerin_call(host: str, port: int, request: Request[Any], result_type: type[P], *,
                       timeout: float = 30.0, first_timeout: float | None = None,
                       total_timeout: float | None = None,
                       limits: LumerinLimits | None = None) -> AsyncIterator[Response[P]]:
    """Send one request to a reference provider; yield each response until EOF.

    ``timeout`` bounds the connect and every wait for the next object, except the
    wait for the first one, bounded by ``first_timeout`` (default ``timeout``: a long
    prompt may take a while to its first token); ``total_timeout`` bounds the whole call.
    Responses are parsed (result typed by ``result_type``) but not verified, and one
    whose id is not the request's is ``BAD_REQUEST``. Raises
    ``RpcUnavailable``/``RpcTimeout`` when the link fails or stalls, ``RpcError`` for a
    malformed stream. Closing the generator closes the connection: wrap it in
    ``contextlib.aclosing`` when the caller may stop early.
    """
    limits = limits or LumerinLimits()
    deadline = None if total_timeout is None else time.monotonic() + total_timeout
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError as exc:
        raise RpcTimeout(f"connect to {host}:{port} timed out") from exc
    except OSError as exc:
        raise RpcUnavailable(f"cannot connect to {host}:{port}: {exc}") from exc
    _keepalive(writer)
    try:
        try:
            writer.write(request.encode())
            await asyncio.wait_for(writer.drain(), timeout)
        except TimeoutError as exc:
            raise RpcTimeout("provider did not accept the request in time") from exc
        except OSError as exc:
            raise RpcUnavailable(f"failed to write to provider: {exc}") from exc
        splitter = JsonObjectSplitter(limits.max_response_bytes, limits.max_depth)
        count = total = 0
        while True:
            gap = timeout if count or first_timeout is None else first_timeout
            wait = gap if deadline is None else min(gap, deadline - time.monotonic())
            if wait <= 0:
                raise RpcTimeout("provider stream exceeded the total timeout")
            try:
                data = await asyncio.wait_for(reader.read(_READ_SIZE), wait)
            except TimeoutError as exc:
                raise RpcTimeout("provider stopped sending") from exc
            except OSError as exc:
                raise RpcUnavailable(f"connection to provider failed: {exc}") from exc
            if not data:
                if splitter.pending:
                    raise RpcUnavailable("provider closed the connection mid-object")
                return
            total += len(data)
            if total > limits.max_stream_bytes:
                raise RpcError(ErrorCode.PAYLOAD_TOO_LARGE, "response stream too large")
            for raw in splitter.feed(data):
                count += 1
                if count > limits.max_stream_objects:
                    raise RpcError(ErrorCode.PAYLOAD_TOO_LARGE, "too many response objects")
                response = parse_response(parse_object(raw, limits.max_response_bytes),
                                          result_type)
                if response.id != request.id:
                    raise RpcError(ErrorCode.BAD_REQUEST,
                                   f"response id {response.id!r} is not the request's")
                yield response
    finally:
        await _close(writer)


# -- provider ----------------------------------------------------------------------------
async def read_request(reader: asyncio.StreamReader, first_bytes: bytes = b"", *,
                       timeout: float = 30.0,
                       limits: LumerinLimits | None = None) -> dict[str, Any] | None:
    """The one request object of a connection (``first_bytes`` already read by a sniffer).

    ``None`` when the peer sent nothing before closing. Raises ``RpcTimeout`` when
    the object is not complete within ``timeout`` (a slow-loris guard), ``RpcError``
    for garbage or an oversized object. Bytes after the object are ignored, as Go does.
    """
    limits = limits or LumerinLimits()
    splitter = JsonObjectSplitter(limits.max_request_bytes, limits.max_depth)
    deadline = time.monotonic() + timeout
    data = first_bytes
    received = 0
    while True:
        received += len(data)
        if received > limits.max_request_bytes + _READ_SIZE:
            raise RpcError(ErrorCode.PAYLOAD_TOO_LARGE, "request too large")
        objects = splitter.feed(data)
        if objects:
            return parse_object(objects[0], limits.max_request_bytes)
        wait = deadline - time.monotonic()
        if wait <= 0:
            raise RpcTimeout("request not received in time")
        try:
            data = await asyncio.wait_for(reader.read(_READ_SIZE), wait)
        except TimeoutError as exc:
            raise RpcTimeout("request not received in time") from exc
        if not data:
            if splitter.pending:
                raise RpcError(ErrorCode.BAD_REQUEST, "connection closed mid-request")
            return None


async def handle_lumerin_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                    handler: Handler, first_bytes: bytes = b"", *,
                                    request_timeout: float = 30.0, write_timeout: float = 60.0,
                                    limits: LumerinLimits | None = None) -> None:
    """Serve one accepted connection the way the reference provider does, then close it.

    Reads one request (``first_bytes`` are what a protocol sniffer already consumed),
    parses it (an unknown method or bad params gets the reference's unsigned error
    with the request id), runs ``handler`` and writes each response it yields. An
    ``RpcError`` from the handler becomes one unsigned error object; any other
    exception an ``internal error`` one (logged). An unreadable request, a stalled
    one or a reader slower than ``write_timeout`` gets the connection closed.
    Never raises.
    """
    _keepalive(writer)
    peer = writer.get_extra_info("peername")
    request_id = ""
    try:
        try:
            obj = await read_request(reader, first_bytes, timeout=request_timeout, limits=limits)
        except (RpcError, RpcUnavailable, OSError) as exc:
            log.info("lumerin.bad_request", peer=peer, error=str(exc))
            return  # Go: "error reading message", no reply
        if obj is None:
            return
        request_id = request_id_of(obj) or ""
        try:
            request = parse_request(obj)
        except RpcError as exc:
            await _send(writer, error_response(request_id, exc), write_timeout)
            return
        responses = handler(request)
        try:
            async for response in responses:
                await _send(writer, response, write_timeout)
        except RpcError as exc:
            await _send(writer, error_response(request_id, exc), write_timeout)
        except _PeerGone:
            raise
        except Exception:
            log.exception("lumerin.handler_failed", peer=peer, method=request.method)
            await _send(writer, error_response(request_id, "internal error"), write_timeout)
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("lumerin.handler_cleanup_failed", method=request.method)
    except _PeerGone as exc:
        log.info("lumerin.connection_lost", peer=peer, error=str(exc.__cause__ or exc))
    finally:
        await _close(writer)


class _PeerGone(Exception):
    """Writing to the consumer failed or stalled: nothing more can be sent."""


async def _send(writer: asyncio.StreamWriter, response: Response[Any], timeout: float) -> None:
    try:
        writer.write(response.encode())
        await asyncio.wait_for(writer.drain(), timeout)
    except (OSError, TimeoutError) as exc:
        raise _PeerGone("consumer stopped reading") from exc


class LumerinServer:
    """A standalone listener for this wire (the provider may instead sniff the first
    byte on a shared port and call ``handle_lumerin_connection`` itself)."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0, *,
                 max_connections: int = 256, request_timeout: float = 30.0,
                 limits: LumerinLimits | None = None) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.request_timeout = request_timeout
        self.limits = limits or LumerinLimits()
        self._slots = asyncio.Semaphore(max_connections)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> LumerinServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._slots.locked():
            await _close(writer)  # at capacity: refuse rather than queue
            return
        async with self._slots:
            await handle_lumerin_connection(reader, writer, self.handler,
                                            request_timeout=self.request_timeout,
                                            limits=self.limits)
