"""The consumer's side of MOR-RPC: one lazily opened, shared WebSocket per provider.

Requests are multiplexed by id over the socket; a single reader task routes
incoming frames to the waiting call or stream. Every signed frame must recover
to the provider address the caller expects (from the chain), else the request
fails with ``BAD_SIGNATURE``; its ``re`` must equal our request's nonce, else
``REPLAYED_MESSAGE``. If the socket drops, every pending request fails at once
with ``RpcUnavailable`` and the next request reconnects: requests are never
retried silently because a prompt is not idempotent (it costs session time).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import aiohttp
import structlog

from .crypto import CipherCache, E2ECipher, Role, SessionKey
from .errors import ErrorCode, RpcError, RpcTimeout, RpcUnavailable
from .protocol import (
    CANCEL,
    CREDIT,
    MAX_FRAME_BYTES,
    PING,
    STREAM_WINDOW,
    WS_PATH,
    RequestId,
    chunk_aad_prefix,
    decode_frame,
    encode_frame,
    is_request_id,
    notification_frame,
    payload_aad,
    request_frame,
)
from .signing import Signer, new_nonce, public_key_to_address, recover_frame_public_key

log = structlog.get_logger(__name__)


_CHUNK_HEAD = '{"id":'
_SEQ_KEY = ',"seq":'
_CHUNK_KEY = ',"chunk":"'


def _chunk_frame(text: str) -> dict[str, Any] | None:
    """A chunk frame exactly as ``chunk_text`` formats it, read without ``json.loads``
    (it is on the per-token path); None for anything else, which then goes through
    ``decode_frame``. A misread cannot pass: the chunk is sealed under (id, nonce, seq).
    """
    if not (text.startswith(_CHUNK_HEAD) and text.endswith('"}')):
        return None
    i = text.find(_SEQ_KEY, 6)
    j = text.find(_CHUNK_KEY, i)
    if i < 0 or j < 0:
        return None
    rid, seq, chunk = text[6:i], text[i + 7 : j], text[j + 10 : -2]
    if not (0 < len(rid) <= 16 and 0 < len(seq) <= 16) or '"' in chunk:  # ids < 2**53
        return None
    if not (rid.isascii() and rid.isdigit() and seq.isascii() and seq.isdigit()):
        return None
    return {"id": int(rid), "seq": int(seq), "chunk": chunk}


class ChunkSink(Protocol):
    """Where ``RpcStream.relay`` puts each chunk: e.g. a client's HTTP response."""

    def write(self, chunk: bytes) -> bool:
        """Take one chunk at once (no await: the socket's reader calls it); False when
        no more should come until ``drain`` returns. Raising ends the stream."""

    async def drain(self) -> None:
        """Return once ``write`` may be called again without piling up."""


async def relay_chunks(chunks: AsyncIterator[bytes], sink: ChunkSink) -> None:
    """``RpcStream.relay``'s contract for any stream of chunks, read in order by the
    caller's task (where nothing is gained by writing from a socket's reader)."""
    async for chunk in chunks:
        if not sink.write(chunk):
            await sink.drain()


_DRAIN: dict[str, Any] = {"drain": True}
"""Queued for a relaying stream whose sink is full: the relay awaits its drain."""


class _Inbox:
    """Frames for one request, in arrival order; an exception ends it.

    The wait limit uses one lazily re-armed timer instead of a fresh timeout per
    wait: a paced stream waits once per chunk, and creating and cancelling a
    timer each time was a measurable share of the per-chunk CPU.
    """

    __slots__ = ("_items", "_limit_s", "_loop", "_timer", "_wait_started", "_waiter",
                 "on_chunk")

    def __init__(self) -> None:
        self._items: deque[dict[str, Any] | BaseException] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wait_started = 0.0
        self._limit_s = 0.0
        self.on_chunk: Callable[[dict[str, Any]], None] | None = None
        """Set while a stream is relayed: its chunk frames go here, not into the queue."""

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: dict[str, Any] | BaseException) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def pop(self, limit_s: float | None) -> dict[str, Any]:
        if not self._items:
            self._loop = loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            self._wait_started = loop.time()
            self._limit_s = math.inf if limit_s is None else limit_s
            if limit_s is not None:
                deadline = self._wait_started + limit_s
                timer = self._timer
                if timer is None or timer.when() > deadline:
                    if timer is not None:
                        timer.cancel()
                    self._timer = loop.call_at(deadline, self._on_timer)
            try:
                await waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if isinstance(item, BaseException):
            self._items.appendleft(item)  # stays failed for any later pop
            self.stop_timer()
            raise item
        return item

    def take_queued_chunk(self) -> dict[str, Any] | None:
        """The oldest queued frame if it is a chunk (taken off the queue), else None."""
        items = self._items
        if items and isinstance(items[0], dict) and "chunk" in items[0]:
            item = items.popleft()
            assert isinstance(item, dict)
            return item
        return None

    def touch(self) -> None:
        """A relayed chunk arrived: the wait limit counts again from now."""
        if self._waiter is not None and self._loop is not None:
            self._wait_started = self._loop.time()

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting now; the next wait re-arms
        loop = asyncio.get_running_loop()
        deadline = self._wait_started + self._limit_s
        if loop.time() >= deadline:
            waiter.set_exception(
                RpcTimeout(f"no frame from provider within {self._limit_s:g} s"))
        elif deadline != math.inf:
            self._timer = loop.call_at(deadline, self._on_timer)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Link:
    """One WebSocket and the requests sent on it: a drop fails exactly these."""

    __slots__ = ("pending", "reader", "ws")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pending: dict[RequestId, _Inbox] = {}
        self.reader: asyncio.Task[None] | None = None

    def fail_all(self, exc: RpcUnavailable) -> None:
        pending, self.pending = self.pending, {}
        for inbox in pending.values():
            inbox.push(exc)


class _Request:
    """A sent request: where its frames arrive and what binds the reply to it."""

    __slots__ = ("id", "inbox", "link", "nonce")

    def __init__(self, rid: RequestId, nonce: str, inbox: _Inbox, link: _Link) -> None:
        self.id = rid
        self.nonce = nonce
        self.inbox = inbox
        self.link = link

    def forget(self) -> bool:
        """Stop routing frames to it; True if it was still pending."""
        self.inbox.stop_timer()
        return self.link.pending.pop(self.id, None) is not None


class RpcClient:
    """Calls one provider at ``endpoint`` (``host:port``) whose wallet must sign every reply."""

    def __init__(self, endpoint: str, signer: Signer, expected_provider_address: str, *,
                 connect_timeout: float = 3.0, first_frame_timeout: float = 90.0,
                 frame_timeout: float = 90.0, heartbeat: float | None = 20.0,
                 max_frame_bytes: int = MAX_FRAME_BYTES,
                 cipher_cache: CipherCache | None = None) -> None:
        self.endpoint = endpoint
        self.url = endpoint if "://" in endpoint else f"ws://{endpoint}{WS_PATH}"
        self.signer = signer
        self.expected_provider_address = expected_provider_address
        self.connect_timeout = connect_timeout
        self.first_frame_timeout = first_frame_timeout
        self.frame_timeout = frame_timeout
        self.heartbeat = heartbeat
        self.max_frame_bytes = max_frame_bytes
        self.cipher_cache = cipher_cache if cipher_cache is not None else CipherCache()
        self.provider_public_key: bytes | None = None
        """Learned from the first verified frame; needed for end-to-end encryption."""
        self.connects = 0
        self._expected = expected_provider_address.lower()
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._link: _Link | None = None
        self._connect_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"RpcClient({self.endpoint}, provider={self.expected_provider_address})"

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.ws.closed

    # -- public API ---------------------------------------------------------------------------

    async def call(self, method: str, params: dict[str, Any], *,
                   cipher: E2ECipher | None = None, payload: bytes | None = None,
                   first_frame_timeout: float | None = None) -> dict[str, Any]:
        """One request, one verified result; ``RpcError`` for an error frame."""
        req = await self._send_request(method, params, cipher, payload)
        limit = self.first_frame_timeout if first_frame_timeout is None else first_frame_timeout
        try:
            frame = await req.inbox.pop(limit)
        except RpcTimeout:
            await self._cancel(req)
            raise
        except BaseException:
            self._cancel_soon(req)
            raise
        req.forget()
        if "chunk" in frame:
            await self._cancel(req)
            raise RpcError(ErrorCode.BAD_REQUEST, f"{method} streams: use stream()")
        return self._verify_final(frame, req.nonce)

    def stream(self, method: str, params: dict[str, Any], *, cipher: E2ECipher,
               payload: bytes | None = None) -> RpcStream:
        """Decrypted chunks as an async iterator; ``.result`` holds the signed trailer.

        Use ``async with client.stream(...) as s: async for chunk in s`` so that
        leaving early cancels the provider's work.
        """
        return RpcStream(self, method, params, cipher, payload)

    async def ping(self) -> dict[str, Any]:
        return await self.call(PING, {"nonce": new_nonce()})

    async def cipher_for(self, session_key: SessionKey) -> E2ECipher:
        """The consumer's cipher for ``session_key`` and this provider (pings once if needed)."""
        if self.provider_public_key is None:
            await self.ping()
        assert self.provider_public_key is not None
        return self.cipher_cache.get(session_key, self.provider_public_key, Role.CONSUMER)

    async def connect(self) -> None:
        """Open the socket now (otherwise the first request does)."""
        await self._connected_link()

    async def close(self) -> None:
        """Fail pending requests, close the socket and the HTTP session."""
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            await link.ws.close()
            if link.reader is not None:
                await asyncio.gather(link.reader, return_exceptions=True)
            link.fail_all(RpcUnavailable("client closed"))
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- internals ----------------------------------------------------------------------------

    async def _connected_link(self) -> _Link:
        link = self._link
        if link is not None and not link.ws.closed:
            return link
        async with self._connect_lock:
            link = self._link
            if link is not None and not link.ws.closed:
                return link
            if self._closed:
                raise RpcUnavailable("client is closed")
            if self._session is None or self._session.closed:
                self._session = aiohttp.ClientSession()
            try:
                ws = await asyncio.wait_for(
                    self._session.ws_connect(self.url, heartbeat=self.heartbeat, compress=0,
                                             max_msg_size=2 * self.max_frame_bytes),
                    self.connect_timeout)
            except TimeoutError as exc:
                raise RpcTimeout(f"connect to {self.endpoint} timed out") from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise RpcUnavailable(f"cannot connect to {self.endpoint}: {exc}") from exc
            link = _Link(ws)
            link.reader = asyncio.create_task(self._read_loop(link))
            self._link = link
            self.connects += 1
            return link

    async def _send_request(self, method: str, params: dict[str, Any],
                            cipher: E2ECipher | None, payload: bytes | None) -> _Request:
        link = await self._connected_link()
        rid = next(self._ids)
        nonce = new_nonce()
        if payload is not None:
            if cipher is None:
                raise ValueError("payload needs a cipher")
            sealed = cipher.seal(payload, payload_aad(rid, nonce))
            params = {**params, "payload": base64.b64encode(sealed).decode()}
        frame = request_frame(rid, method, params, self.signer.address)
        frame["nonce"] = nonce
        req = _Request(rid, nonce, _Inbox(), link)
        link.pending[rid] = req.inbox
        try:
            await self._send(link, self.signer.sign_frame(frame))
        except BaseException:
            req.forget()
            raise
        return req

    async def _send(self, link: _Link, frame: dict[str, Any]) -> None:
        if link.ws.closed:
            raise RpcUnavailable(f"connection to {self.endpoint} lost")
        try:
            await link.ws.send_str(encode_frame(frame))
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise RpcUnavailable(f"connection to {self.endpoint} lost: {exc}") from exc

    async def _notify(self, link: _Link, method: str, params: dict[str, Any]) -> None:
        """Best effort: when the link is gone the provider has dropped its requests anyway."""
        with contextlib.suppress(RpcUnavailable):
            await self._send(link, self.signer.sign_frame(
                notification_frame(method, params, self.signer.address)))

    async def _cancel(self, req: _Request) -> None:
        if req.forget():
            await self._notify(req.link, CANCEL, {"id": req.id})

    def _cancel_soon(self, req: _Request | None) -> asyncio.Task[None] | None:
        """Cancel from code that cannot await (cancellation, an abandoned stream's
        finaliser); the task sending it, if one was needed."""
        if req is None or not req.forget():
            return None
        return self._notify_soon(req.link, CANCEL, {"id": req.id})

    def _notify_soon(self, link: _Link, method: str, params: dict[str, Any]
                     ) -> asyncio.Task[None] | None:
        """``_notify`` from code that cannot await; the task sending it, if any."""
        if link.ws.closed:
            return None
        try:
            task = asyncio.get_running_loop().create_task(self._notify(link, method, params))
        except RuntimeError:  # no running loop: the socket dies with it
            return None
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _read_loop(self, link: _Link) -> None:
        reason = "provider closed the connection"
        pending = link.pending
        try:
            async for msg in link.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    if msg.type is aiohttp.WSMsgType.ERROR:
                        reason = f"connection error: {link.ws.exception()}"
                        break
                    continue
                try:
                    frame = _chunk_frame(msg.data) or decode_frame(msg.data)
                except RpcError:
                    log.warning("mor_rpc.bad_frame", endpoint=self.endpoint)
                    continue
                rid = frame.get("id")
                inbox = pending.get(rid) if is_request_id(rid) else None
                if inbox is not None:
                    on_chunk = inbox.on_chunk
                    if on_chunk is not None and "chunk" in frame:
                        on_chunk(frame)  # a relayed stream: opened and written right here
                    else:
                        inbox.push(frame)
                elif "error" in frame:
                    log.warning("mor_rpc.unrouted_error", endpoint=self.endpoint,
                                error=frame.get("error"))
        except Exception as exc:  # never let the reader die silently
            reason = f"connection error: {exc}"
        finally:
            if self._link is link:
                self._link = None
            link.fail_all(RpcUnavailable(f"{self.endpoint}: {reason}"))

    def _verify_final(self, frame: dict[str, Any], nonce: str) -> dict[str, Any]:
        """Check a signed response is the provider's answer to *this* request."""
        public_key = recover_frame_public_key(frame)
        if public_key_to_address(public_key).lower() != self._expected:
            raise RpcError(ErrorCode.BAD_SIGNATURE,
                           "response is not signed by the expected provider")
        if frame.get("re") != nonce:
            raise RpcError(ErrorCode.REPLAYED_MESSAGE, "response answers another request")
        if self.provider_public_key is None:
            self.provider_public_key = public_key
        if "error" in frame:
            raise RpcError.from_dict(frame["error"])
        result = frame.get("result")
        if not isinstance(result, dict):
            raise RpcError(ErrorCode.BAD_REQUEST, "response has neither result nor error")
        return result


class RpcStream:
    """Iterator over one streamed request's decrypted chunks (bytes)."""

    def __init__(self, client: RpcClient, method: str, params: dict[str, Any],
                 cipher: E2ECipher, payload: bytes | None) -> None:
        self._client = client
        self._request = (method, params, payload)
        self._cipher = cipher
        self._req: _Request | None = None
        self._prefix = b""
        self._seq = 0
        self._unacked = 0
        self._digest = hashlib.sha256()
        self._done = False
        self._cancelling: asyncio.Task[None] | None = None
        self._sink: ChunkSink | None = None
        self._draining = False
        self.result: dict[str, Any] | None = None
        """The provider's signed trailer ({chunks, digest, ...}) once the stream ended."""

    async def start(self) -> None:
        """Send the request (done implicitly by the first ``__anext__``)."""
        if self._req is not None:
            return
        method, params, payload = self._request
        self._req = await self._client._send_request(method, params, self._cipher, payload)
        self._prefix = chunk_aad_prefix(self._req.id, self._req.nonce)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        await self.start()
        req = self._req
        assert req is not None
        client = self._client
        timeout = client.frame_timeout if self._seq else client.first_frame_timeout
        try:
            frame = await req.inbox.pop(timeout)
        except RpcTimeout:
            await self.aclose()
            raise
        except RpcUnavailable:
            self._done = True
            raise
        except BaseException:  # our task was cancelled mid-wait: stop the provider too
            self._done = True
            self._cancelling = client._cancel_soon(req)
            raise
        if "chunk" in frame:
            return await self._open_chunk(req, frame)
        self._done = True
        req.forget()
        self._check_trailer(client._verify_final(frame, req.nonce))
        raise StopAsyncIteration

    async def _open_chunk(self, req: _Request, frame: dict[str, Any]) -> bytes:
        try:
            plaintext = self._opened(frame)
        except RpcError:
            await self.aclose()
            raise
        if self._unacked >= STREAM_WINDOW // 2:
            grant, self._unacked = self._unacked, 0
            await self._client._notify(req.link, CREDIT, {"id": req.id, "n": grant})
        return plaintext

    def _opened(self, frame: dict[str, Any]) -> bytes:
        """The next chunk's plaintext, checked against its place in the stream and counted
        in the digest the signed trailer must match; ``RpcError`` if it is not that."""
        seq = frame.get("seq")
        chunk = frame.get("chunk")
        if seq != self._seq or not isinstance(chunk, str):
            raise RpcError(ErrorCode.STREAM_INTEGRITY, f"expected chunk {self._seq}, got {seq}")
        try:
            sealed = base64.b64decode(chunk)
        except ValueError as exc:
            raise RpcError(ErrorCode.DECRYPTION_FAILED, "chunk is not base64") from exc
        self._digest.update(len(sealed).to_bytes(4, "big"))
        self._digest.update(sealed)
        plaintext = self._cipher.open(sealed, self._prefix + seq.to_bytes(8, "big"))
        self._seq += 1
        self._unacked += 1
        return plaintext

    async def relay(self, sink: ChunkSink) -> None:
        """Hand every further chunk to ``sink`` as the socket's reader opens it, and
        return once the signed trailer checks out (``.result`` is then set).

        The per-token path of a proxy: no task wakes per chunk, nor any async iterator
        step; the reader decrypts the frame and ``sink.write`` puts it on its way in
        the same loop iteration. A sink that cannot take more (its client reads
        slowly) makes credit wait until ``sink.drain()`` returns, so the provider stops
        after one window, as with ``async for``. What ends the relay early (the sink
        raising, a chunk out of place, the frame timeout, our cancellation) cancels the
        provider's work, as leaving ``async for`` does, and is raised here."""
        if self._done:
            return
        await self.start()
        req = self._req
        assert req is not None
        inbox = req.inbox
        self._sink = sink
        inbox.on_chunk = self._relayed
        try:
            while (queued := inbox.take_queued_chunk()) is not None:
                self._relayed(queued)  # arrived before the switch: they go first
            client = self._client
            while True:
                frame = await inbox.pop(
                    client.frame_timeout if self._seq else client.first_frame_timeout)
                if frame is not _DRAIN:
                    break
                await sink.drain()
                self._draining = False
                if self._unacked >= STREAM_WINDOW // 2:
                    grant, self._unacked = self._unacked, 0
                    await client._notify(req.link, CREDIT, {"id": req.id, "n": grant})
        except RpcTimeout:  # an RpcUnavailable, but the provider may still be at work
            await self.aclose()
            raise
        except RpcUnavailable:  # the socket is gone, and the provider's work with it
            self._done = True
            raise
        except Exception:  # the sink raised, or a chunk failed its checks
            await self.aclose()
            raise
        except BaseException:  # our task was cancelled: stop the provider too
            self._done = True
            self._cancelling = self._client._cancel_soon(req)
            raise
        finally:
            inbox.on_chunk = None
            self._sink = None
        self._done = True  # the frame is the final one: every chunk frame was relayed
        req.forget()
        self._check_trailer(self._client._verify_final(frame, req.nonce))

    def _relayed(self, frame: dict[str, Any]) -> None:
        """One chunk frame of a relayed stream, from the reader (which must not raise)."""
        req, sink = self._req, self._sink
        assert req is not None and sink is not None  # set together with on_chunk
        try:
            ready = sink.write(self._opened(frame))
        except Exception as exc:  # handed to relay(), which raises it
            req.inbox.on_chunk = None
            self._sink = None
            req.inbox.push(exc)
            return
        req.inbox.touch()
        if not ready:
            if not self._draining:
                self._draining = True
                req.inbox.push(_DRAIN)
        elif self._unacked >= STREAM_WINDOW // 2 and not self._draining:
            grant, self._unacked = self._unacked, 0
            self._client._notify_soon(req.link, CREDIT, {"id": req.id, "n": grant})

    def _check_trailer(self, result: dict[str, Any]) -> None:
        if result.get("chunks") != self._seq:
            raise RpcError(ErrorCode.STREAM_INTEGRITY,
                           f"provider sent {result.get('chunks')} chunks, received {self._seq}")
        if result.get("digest") != "0x" + self._digest.hexdigest():
            raise RpcError(ErrorCode.STREAM_INTEGRITY, "stream digest does not match")
        self.result = result

    async def aclose(self) -> None:
        """Stop early: tells the provider to cancel the work (no-op once finished).
        Once it returns, the cancel is on the socket, ahead of any later request, even
        when a cancellation of ours sent it (the provider frees the work's slot before
        it reads the next frame)."""
        if self._done:
            if self._cancelling is not None and not self._cancelling.done():
                await asyncio.wait([self._cancelling])
            return
        self._done = True
        if self._req is not None:
            await self._client._cancel(self._req)

    async def __aenter__(self) -> RpcStream:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not self._done:
            self._client._cancel_soon(self._req)


class RpcPool:
    """One shared ``RpcClient`` per (endpoint, provider address)."""

    def __init__(self, signer: Signer, **client_options: Any) -> None:
        self.signer = signer
        self.client_options = client_options
        cache = client_options.pop("cipher_cache", None)
        self.cipher_cache: CipherCache = cache if cache is not None else CipherCache()
        self._clients: dict[tuple[str, str], RpcClient] = {}

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def connected(self) -> int:
        """Clients whose socket is open now."""
        return sum(1 for c in self._clients.values() if c.connected)

    def get(self, endpoint: str, provider_address: str) -> RpcClient:
        key = (endpoint, provider_address.lower())
        client = self._clients.get(key)
        if client is None:
            client = RpcClient(endpoint, self.signer, provider_address,
                               cipher_cache=self.cipher_cache, **self.client_options)
            self._clients[key] = client
        return client

    async def discard(self, endpoint: str, provider_address: str) -> None:
        """Forget a provider (e.g. its endpoint changed on chain) and close its socket."""
        client = self._clients.pop((endpoint, provider_address.lower()), None)
        if client is not None:
            await client.close()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
