"""The provider's MOR-RPC listener: one WebSocket per consumer, many requests on it.

Every incoming frame is checked before any handler runs: shape, timestamp
freshness, signature (recovered key → ``ctx.sender``, which must equal the
claimed ``from``), then the replay guard. Each request runs in its own task, so
a slow prompt never blocks a ping behind it. Unary results, errors and the
final frame of every stream are signed with the provider's wallet key.

Stream chunks are deliberately *not* signed. Each is AES-256-GCM sealed under
the session's ECDH-derived key, which only this consumer and this provider
hold, with AAD binding (request id, request nonce, seq): a forged, altered,
reordered, replayed or transplanted chunk fails its tag. A secp256k1 signature
per chunk would cost ~50 µs to sign plus ~65 µs to verify (bench/rpc_crypto.py),
more than twice the whole budget of 50 µs of CPU per chunk for both routers,
where sealing plus opening costs ~3 µs. Nothing is lost: the signed final frame
carries the chunk count (truncation is detected) and a SHA-256 over the
ciphertexts, so the provider's signature still commits to the whole stream.

Flow control: a stream may run ``STREAM_WINDOW`` chunks ahead of the consumer;
the consumer returns credit with ``rpc.credit`` notifications as it reads. A
consumer that stops reading therefore stops the handler (and its backend read)
after one window instead of growing buffers on either side, and one slow
stream never stalls the others sharing the socket. A stream left without credit
for ``credit_timeout`` ends with ``FLOW_CONTROL`` and frees its slot; a consumer
that stops reading its socket altogether (the send buffer stays full for as long)
loses the connection, which cancels its requests.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import inspect
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from .. import __version__
from ..netguard import ConnectionLimits, serve_app
from .canonical import CanonicalJsonError
from .coalesce import coalesce_writes
from .crypto import CipherCache, E2ECipher, Role
from .errors import ErrorCode, RpcError
from .protocol import (
    CANCEL,
    CREDIT,
    MAX_FRAME_BYTES,
    PING,
    PROTOCOL,
    STREAM_WINDOW,
    WS_PATH,
    RequestId,
    check_request,
    chunk_aad_prefix,
    chunk_text,
    decode_frame,
    encode_frame,
    error_frame,
    is_request_id,
    payload_aad,
    result_frame,
)
from .replay import ReplayGuard
from .signing import Signer, public_key_to_address, recover_frame_public_key

log = structlog.get_logger(__name__)

Chunk = bytes | str | dict[str, Any]
UnaryHandler = Callable[[dict[str, Any], "RequestContext"], Awaitable[dict[str, Any]]]
StreamHandler = Callable[[dict[str, Any], "RequestContext"], AsyncIterator[Chunk]]
H = TypeVar("H", bound=UnaryHandler | StreamHandler)
_MAX_CREDIT = STREAM_WINDOW * 64
_STALLED_BUFFER_BYTES = 256 * 1024
"""Unsent bytes on a socket above which its reader counts as stalled."""
OK = "OK"
PEER_GONE = "PEER_GONE"
CANCELLED = "CANCELLED"
"""The observer's code for a request its consumer cancelled (``rpc.cancel``)."""


class RpcObserver(Protocol):
    """Told once per request (never per chunk), e.g. ``proxy_router.metrics.Metrics``."""

    def rpc_done(self, method: str, code: str, seconds: float) -> None:
        """A registered method finished: ``code`` is ``OK`` or the error code sent."""

    def rpc_frame_rejected(self, code: str) -> None:
        """A frame was refused before dispatch (bad shape, signature, stale, replayed)."""


@dataclass(slots=True, eq=False)
class RequestContext:
    """What a handler knows about the request beyond its params."""

    request_id: RequestId
    method: str
    sender: str
    """Checksum address that signed the request (verified)."""
    sender_public_key: bytes
    nonce: str
    timestamp: int
    params: dict[str, Any]
    remote: str | None
    signer: Signer
    cipher_cache: CipherCache
    trailer: dict[str, Any] = field(default_factory=dict)
    """Stream handlers put summary fields (usage, timings) here for the signed final frame."""
    cipher: E2ECipher | None = None

    def use_peer_key(self, public_key: bytes | str) -> E2ECipher:
        """Encrypt this request's stream to ``public_key`` (the consumer's session key)."""
        self.cipher = self.cipher_cache.get(self.signer, public_key, Role.PROVIDER)
        return self.cipher

    def open_payload(self) -> bytes:
        """Decrypt ``params.payload`` (sealed by the client with ``payload=``)."""
        if self.cipher is None:
            raise RpcError(ErrorCode.INTERNAL, "open_payload() before use_peer_key()")
        sealed = self.params.get("payload")
        if not isinstance(sealed, str):
            raise RpcError(ErrorCode.BAD_REQUEST, "params.payload is missing")
        try:
            raw = base64.b64decode(sealed, validate=True)
        except ValueError as exc:
            raise RpcError(ErrorCode.DECRYPTION_FAILED, "payload is not base64") from exc
        return self.cipher.open(raw, payload_aad(self.request_id, self.nonce))


class _Credits:
    """Chunks this stream may still send before the consumer grants more."""

    __slots__ = ("_event", "available")

    def __init__(self, available: int) -> None:
        self.available = available
        self._event = asyncio.Event()

    def grant(self, n: int) -> None:
        self.available = min(self.available + n, _MAX_CREDIT)
        self._event.set()

    async def wait(self, limit_s: float) -> None:
        while self.available <= 0:
            self._event.clear()
            try:
                async with asyncio.timeout(limit_s):
                    await self._event.wait()
            except TimeoutError as exc:
                raise RpcError(ErrorCode.FLOW_CONTROL, "consumer stopped reading") from exc


class _PeerGone(Exception):
    """Sending to the consumer failed: its socket is closed."""


@dataclass(slots=True, eq=False)
class _Inflight:
    sender: str
    credits: _Credits | None
    task: asyncio.Task[None] | None = None
    cancelled: bool = False
    """The requester sent ``rpc.cancel`` (else a cancelled task lost its connection)."""


class _Connection:
    """One consumer's socket and the requests in flight on it."""

    __slots__ = ("inflight", "remote", "signer", "stalled_s", "transport", "watch", "ws")

    def __init__(self, ws: web.WebSocketResponse, signer: Signer, remote: str | None,
                 transport: asyncio.Transport | None) -> None:
        self.ws = ws
        self.signer = signer
        self.remote = remote
        self.transport = transport
        self.inflight: dict[RequestId, _Inflight] = {}
        self.stalled_s = 0.0
        self.watch: asyncio.TimerHandle | None = None

    async def send_signed(self, frame: dict[str, Any]) -> None:
        """Sign and send; a vanished peer is not an error (its requests are cancelled)."""
        text = encode_frame(self.signer.sign_frame(frame))
        try:
            await self.ws.send_str(text)
        except ConnectionError:
            pass


class RpcServer:
    """MOR-RPC endpoint: register handlers with ``@server.method(name)``."""

    def __init__(self, signer: Signer, *, replay_guard: ReplayGuard | None = None,
                 version: str = __version__, max_inflight: int = 1024,
                 heartbeat: float | None = 30.0, credit_timeout: float = 120.0,
                 max_frame_bytes: int = MAX_FRAME_BYTES,
                 cipher_cache: CipherCache | None = None,
                 observer: RpcObserver | None = None,
                 limits: ConnectionLimits | None = None) -> None:
        self.signer = signer
        self.observer = observer
        self.limits = limits
        """Connection caps and deadlines of ``start()`` (a mounted server gets its app's)."""
        self.replay_guard = replay_guard if replay_guard is not None else ReplayGuard()
        self.version = version
        self.max_inflight = max_inflight
        self.heartbeat = heartbeat
        self.credit_timeout = credit_timeout
        self.max_frame_bytes = max_frame_bytes
        self.cipher_cache = cipher_cache if cipher_cache is not None else CipherCache()
        self.connections_accepted = 0
        self._connections: set[_Connection] = set()
        self._unary: dict[str, UnaryHandler] = {}
        self._streams: dict[str, StreamHandler] = {}
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.method(PING)(self._ping)

    # -- registration -------------------------------------------------------------------------

    def method(self, name: str, *, stream: bool | None = None) -> Callable[[H], H]:
        """Decorator: an ``async def`` handler returns a dict; an async generator streams."""

        def register(fn: H) -> H:
            is_stream = inspect.isasyncgenfunction(fn) if stream is None else stream
            self._unary.pop(name, None)
            self._streams.pop(name, None)
            if is_stream:
                self._streams[name] = fn  # type: ignore[assignment]
            else:
                self._unary[name] = fn  # type: ignore[assignment]
            return fn

        return register

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def _ping(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        nonce = params.get("nonce")
        return {"version": self.version, "protocol": PROTOCOL,
                "nonce": nonce if isinstance(nonce, str) and len(nonce) <= 66 else ctx.nonce,
                "maxFrameBytes": self.max_frame_bytes}

    # -- hosting ------------------------------------------------------------------------------

    def add_routes(self, app: web.Application, path: str = WS_PATH) -> None:
        """Mount on an existing aiohttp app (closes our sockets on app shutdown)."""
        app.router.add_get(path, self.handle)
        app.on_shutdown.append(self._on_shutdown)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on ``host:port`` (0 = any free port); returns the bound port."""
        app = web.Application()
        self.add_routes(app)
        self._runner, self.port = await serve_app(app, host, port, self.limits)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _on_shutdown(self, _app: web.Application) -> None:
        await asyncio.gather(
            *(c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
              for c in list(self._connections)),
            return_exceptions=True,
        )

    # -- connection loop ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp handler for ``GET /mor-rpc``."""
        ws = web.WebSocketResponse(heartbeat=self.heartbeat,
                                   max_msg_size=2 * self.max_frame_bytes, compress=False)
        await ws.prepare(request)
        coalesce_writes(ws)  # many streams' chunks, one write per loop iteration
        transport = request.transport
        # by duck type: uvloop's transports are no asyncio.Transport subclass, and the
        # stalled-reader watch must run under uvloop too
        watched = transport if callable(getattr(transport, "get_write_buffer_size", None)) \
            else None
        conn = _Connection(ws, self.signer, request.remote, cast(asyncio.Transport, watched))
        self._connections.add(conn)
        self.connections_accepted += 1
        self._watch(conn)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_text(conn, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await conn.send_signed(error_frame(
                        None, RpcError(ErrorCode.BAD_REQUEST, "binary frames are not used"), None))
                else:
                    break
        finally:
            self._connections.discard(conn)
            if conn.watch is not None:
                conn.watch.cancel()
            tasks = [e.task for e in conn.inflight.values() if e.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return ws

    def _watch(self, conn: _Connection) -> None:
        """Every few seconds: abort a connection whose send buffer stayed full too long."""
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        interval = max(0.5, self.credit_timeout / 4)
        if transport.get_write_buffer_size() > _STALLED_BUFFER_BYTES:
            conn.stalled_s += interval
            if conn.stalled_s > self.credit_timeout:
                log.info("mor_rpc.reader_stalled", remote=conn.remote,
                         requests=len(conn.inflight))
                transport.abort()
                return
        else:
            conn.stalled_s = 0.0
        conn.watch = asyncio.get_running_loop().call_later(interval, self._watch, conn)

    async def _on_text(self, conn: _Connection, text: str) -> None:
        try:
            frame = decode_frame(text, 2 * self.max_frame_bytes)
        except RpcError as exc:
            await conn.send_signed(error_frame(None, exc, None))
            return
        rid = frame.get("id")
        nonce = frame.get("nonce")
        re = nonce if isinstance(nonce, str) else None
        try:
            ctx = self._authenticate(frame, conn)
        except RpcError as exc:
            if self.observer is not None:
                self.observer.rpc_frame_rejected(str(exc.code))
            if "id" in frame:
                await conn.send_signed(error_frame(rid if is_request_id(rid) else None, exc, re))
            else:
                log.info("mor_rpc.notification_rejected", code=str(exc.code), remote=conn.remote)
            return
        if "id" not in frame:
            self._on_notification(conn, ctx)
            return
        try:
            if len(text) > self.max_frame_bytes:  # this request fails, the link stays
                raise RpcError(ErrorCode.PAYLOAD_TOO_LARGE,
                               f"frame exceeds {self.max_frame_bytes} bytes",
                               {"maxFrameBytes": self.max_frame_bytes})
            entry = self._dispatch(conn, ctx)
        except RpcError as exc:
            await conn.send_signed(error_frame(rid, exc, re))
            return
        conn.inflight[ctx.request_id] = entry

    def _authenticate(self, frame: dict[str, Any], conn: _Connection) -> RequestContext:
        """Shape → freshness → signature → claimed sender → replay, cheapest first."""
        check_request(frame)
        self.replay_guard.check_fresh(frame["timestamp"])
        public_key = recover_frame_public_key(frame)
        sender = public_key_to_address(public_key)
        if sender.lower() != frame["from"].lower():
            raise RpcError(ErrorCode.BAD_SIGNATURE, "signature is not from the claimed sender")
        self.replay_guard.check(sender, frame["timestamp"], frame["nonce"])
        return RequestContext(
            request_id=frame.get("id", ""), method=frame["method"], sender=sender,
            sender_public_key=public_key, nonce=frame["nonce"], timestamp=frame["timestamp"],
            params=frame["params"], remote=conn.remote, signer=self.signer,
            cipher_cache=self.cipher_cache,
        )

    def _dispatch(self, conn: _Connection, ctx: RequestContext) -> _Inflight:
        if ctx.request_id in conn.inflight:
            raise RpcError(ErrorCode.BAD_REQUEST, "a request with this id is still in flight")
        if len(conn.inflight) >= self.max_inflight:
            raise RpcError(ErrorCode.RATE_LIMITED, "too many requests in flight")
        unary = self._unary.get(ctx.method)
        if unary is not None:
            entry = _Inflight(ctx.sender, None)
            entry.task = asyncio.create_task(self._run_unary(conn, unary, ctx))
        else:
            streamer = self._streams.get(ctx.method)
            if streamer is None:
                raise RpcError(ErrorCode.UNKNOWN_METHOD, f"unknown method {ctx.method!r}")
            entry = _Inflight(ctx.sender, _Credits(STREAM_WINDOW))
            entry.task = asyncio.create_task(self._run_stream(conn, streamer, ctx, entry))
        # A task cancelled before its first step never runs its own clean-up.
        entry.task.add_done_callback(functools.partial(_forget, conn, ctx.request_id, entry))
        return entry

    def _on_notification(self, conn: _Connection, ctx: RequestContext) -> None:
        """``rpc.credit {id, n}`` and ``rpc.cancel {id}``, honoured only from the requester.

        A cancel cancels the request's task now: a handler's clean-up (its backend request
        closed, its slot freed) runs before the next frame's handler does, as that one's
        task is scheduled after this cancellation."""
        rid = ctx.params.get("id")
        target = conn.inflight.get(rid) if is_request_id(rid) else None
        if target is None or target.sender != ctx.sender:
            return
        if ctx.method == CREDIT:
            n = ctx.params.get("n")
            if target.credits is not None and isinstance(n, int) and 0 < n <= _MAX_CREDIT:
                target.credits.grant(n)
        elif ctx.method == CANCEL and target.task is not None:
            target.cancelled = True
            target.task.cancel()

    # -- running handlers ---------------------------------------------------------------------

    async def _run_unary(self, conn: _Connection, handler: UnaryHandler,
                         ctx: RequestContext) -> None:
        rid = ctx.request_id
        started = time.perf_counter()
        try:
            result = await handler(ctx.params, ctx)
            if not isinstance(result, dict):
                raise TypeError(f"handler for {ctx.method} returned {type(result).__name__}")
            frame = result_frame(rid, result, ctx.nonce)
        except RpcError as exc:
            frame = error_frame(rid, exc, ctx.nonce)
        except Exception:
            log.exception("mor_rpc.handler_failed", method=ctx.method)
            frame = error_frame(rid, RpcError(ErrorCode.INTERNAL, "internal error"), ctx.nonce)
        finally:
            conn.inflight.pop(rid, None)
        self._observe(ctx.method, frame, started)
        await _send_final(conn, frame, ctx)

    async def _run_stream(self, conn: _Connection, handler: StreamHandler,
                          ctx: RequestContext, entry: _Inflight) -> None:
        rid = ctx.request_id
        credits = entry.credits
        assert credits is not None
        seq = 0
        digest = hashlib.sha256()
        prefix = chunk_aad_prefix(rid, ctx.nonce)
        id_json = json.dumps(rid)
        send = conn.ws.send_str
        started = time.perf_counter()
        try:
            gen = handler(ctx.params, ctx)
            try:
                async for item in gen:
                    cipher = ctx.cipher
                    if cipher is None:
                        raise RpcError(ErrorCode.INTERNAL, "stream chunk before use_peer_key()")
                    if credits.available <= 0:
                        await credits.wait(self.credit_timeout)
                    credits.available -= 1
                    sealed = cipher.seal(_as_bytes(item), prefix + seq.to_bytes(8, "big"))
                    digest.update(len(sealed).to_bytes(4, "big"))
                    digest.update(sealed)
                    try:
                        await send(chunk_text(id_json, seq, base64.b64encode(sealed).decode()))
                    except ConnectionError as exc:
                        raise _PeerGone from exc
                    seq += 1
            finally:
                if isinstance(gen, AsyncGenerator):  # stop the backend read promptly
                    await gen.aclose()
            result = {**ctx.trailer, "chunks": seq, "digest": "0x" + digest.hexdigest()}
            frame = result_frame(rid, result, ctx.nonce)
        except _PeerGone:
            self._observe(ctx.method, None, started)
            return  # our socket is gone; nobody to tell (a handler's ConnectionError is not this)
        except asyncio.CancelledError:  # the consumer cancelled, or its socket closed
            self._observe(ctx.method, None, started, CANCELLED if entry.cancelled else None)
            raise
        except RpcError as exc:
            data = {**(exc.data or {}), "chunks": seq}
            frame = error_frame(rid, RpcError(exc.code, exc.message, data), ctx.nonce)
        except Exception:
            log.exception("mor_rpc.stream_failed", method=ctx.method)
            error = RpcError(ErrorCode.INTERNAL, "internal error", {"chunks": seq})
            frame = error_frame(rid, error, ctx.nonce)
        finally:
            conn.inflight.pop(rid, None)
        self._observe(ctx.method, frame, started)
        await _send_final(conn, frame, ctx)

    def _observe(self, method: str, frame: dict[str, Any] | None, started: float,
                 code: str | None = None) -> None:
        if self.observer is not None:
            if code is None:
                code = PEER_GONE if frame is None else (
                    str(frame["error"]["code"]) if "error" in frame else OK)
            self.observer.rpc_done(method, code, time.perf_counter() - started)


def _forget(conn: _Connection, rid: RequestId, entry: _Inflight, _task: object) -> None:
    if conn.inflight.get(rid) is entry:
        del conn.inflight[rid]


async def _send_final(conn: _Connection, frame: dict[str, Any], ctx: RequestContext) -> None:
    try:
        await conn.send_signed(frame)
    except CanonicalJsonError:  # e.g. a float in the result: tell the consumer, signed
        log.error("mor_rpc.result_not_canonical", method=ctx.method)
        error = RpcError(ErrorCode.INTERNAL, "handler result is not canonical JSON")
        await conn.send_signed(error_frame(ctx.request_id, error, ctx.nonce))


def _as_bytes(item: Chunk) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return json.dumps(item, separators=(",", ":")).encode()
