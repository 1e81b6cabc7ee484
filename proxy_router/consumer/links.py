"""How the consumer reaches a provider: our ``mor-rpc/1``, or the reference's wire.

A provider on the Morpheus-Lumerin network may be a Go proxy-router (raw TCP, one
request per connection, geth ECIES, see ``morrpc/lumerin``) or one of ours (which
serves both wires on its one registered port, ``dualport``). With
``PROVIDER_WIRE=auto`` the first call to an endpoint tries our WebSocket upgrade: our
provider accepts it, while a Go provider cannot parse an HTTP request line and drops
the connection or answers with a JSON error, which no WebSocket handshake accepts; the
consumer then asks ``network.ping`` in the reference's wire, and a pong signed by the
bid's provider settles it. The verdict is kept per endpoint until the provider is
discarded (its endpoint changed). ``mor-rpc`` and ``reference`` force one wire.

``LumerinProvider`` gives the consumer's services the shape of an ``RpcClient``
(``call``, ``stream``, ``cipher_for``): approvals, chunks and reports come back in the
form our own protocol gives them, so nothing above this module knows which wire ran.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal, Protocol, cast

import structlog

from proxy_router import bounded_json
from proxy_router.morrpc import ChunkSink, RpcPool, Signer, relay_chunks
from proxy_router.morrpc.errors import ErrorCode, RpcError, RpcUnavailable
from proxy_router.morrpc.lumerin import (
    PongRes,
    SessionPromptRes,
    SessionReportRes,
    SessionRes,
    check_pong,
    check_report_response,
    check_session_response,
    lumerin_call,
    ping_request,
    prompt_chunks,
    prompt_request,
    report_request,
    session_request,
)
from proxy_router.morrpc.lumerin.signatures import normalize_public_key
from proxy_router.morrpc.protocol import MAX_FRAME_BYTES

log = structlog.get_logger(__name__)

Wire = Literal["auto", "mor-rpc", "reference"]


class ProviderStream(Protocol):
    result: dict[str, Any] | None

    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def __anext__(self) -> bytes: ...
    async def relay(self, sink: ChunkSink) -> None: ...
    async def aclose(self) -> None: ...


class LinkPool(Protocol):
    """Where the consumer's services get a provider's link (``ProviderPool``, or a bare
    ``RpcPool`` where only our own protocol is spoken)."""

    def get(self, endpoint: str, provider_address: str) -> ProviderLink: ...


class ProviderLink(Protocol):
    """What the consumer's services call on a provider, whatever the wire."""

    @property
    def connected(self) -> bool: ...

    async def call(self, method: str, params: dict[str, Any], *, cipher: Any = None,
                   payload: bytes | None = None,
                   first_frame_timeout: float | None = None) -> dict[str, Any]: ...

    def stream(self, method: str, params: dict[str, Any], *, cipher: Any,
               payload: bytes | None = None) -> Any: ...

    async def cipher_for(self, session_key: Any) -> Any: ...

    async def close(self) -> None: ...


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise RpcUnavailable(f"provider endpoint {endpoint!r} is not host:port")
    return host.strip("[]"), int(port)


class LumerinProvider:
    """A provider spoken to in the reference's wire (a Go proxy-router, or ours)."""

    connected = False  # one connection per request: nothing stays open

    def __init__(self, endpoint: str, signer: Signer, provider_address: str, chain_id: int, *,
                 connect_timeout: float = 3.0, first_frame_timeout: float = 90.0,
                 frame_timeout: float = 90.0) -> None:
        self.endpoint = endpoint
        self.host, self.port = _host_port(endpoint)
        self.signer = signer
        self.provider = provider_address
        self.chain_id = chain_id
        self.connect_timeout = connect_timeout
        self.first_frame_timeout = first_frame_timeout
        self.frame_timeout = frame_timeout
        self.provider_public_key: bytes | None = None

    def __repr__(self) -> str:
        return f"LumerinProvider({self.endpoint}, provider={self.provider})"

    async def _one(self, request: Any, result_type: type[Any],
                   first_timeout: float | None = None) -> Any:
        calls = cast(AsyncGenerator[Any, None], lumerin_call(
            self.host, self.port, request, result_type, timeout=self.connect_timeout,
            first_timeout=first_timeout or self.first_frame_timeout))
        async with contextlib.aclosing(calls) as responses:
            async for response in responses:
                return response
        raise RpcUnavailable(f"provider {self.endpoint} closed the connection without an answer")

    async def ping(self) -> dict[str, Any]:
        request = ping_request(self.signer)
        pong = check_pong(await self._one(request, PongRes, self.connect_timeout),
                          provider=self.provider, nonce=request.params.nonce)
        self.provider_public_key = pong.recover_public_key()
        return {"nonce": "0x" + pong.nonce.hex(), "version": pong.version}

    async def _provider_key(self) -> bytes:
        if self.provider_public_key is None:
            await self.ping()
        assert self.provider_public_key is not None
        return self.provider_public_key

    async def call(self, method: str, params: dict[str, Any], *, cipher: Any = None,
                   payload: bytes | None = None,
                   first_frame_timeout: float | None = None) -> dict[str, Any]:
        """Our methods, answered in our protocol's result shape."""
        if method == "network.ping":
            return await self.ping()
        if method == "session.request":
            bid_id = str(params["bidId"])
            request = session_request(self.signer, bid_id=bid_id,
                                      spend=int(params.get("spend", 0)))
            opened = check_session_response(await self._one(request, SessionRes),
                                            provider=self.provider, user=self.signer.address,
                                            bid_id=bid_id, chain_id=self.chain_id)
            self.provider_public_key = normalize_public_key(opened.provider_public_key)
            return {"approval": "0x" + opened.approval.hex(),
                    "approvalSig": "0x" + opened.approval_sig.hex(), "bidId": bid_id}
        if method == "session.report":
            session_id = str(params["sessionId"])
            key = await self._provider_key()
            response = await self._one(report_request(self.signer, session_id=session_id),
                                       SessionReportRes, first_frame_timeout)
            check_report_response(response, provider_public_key=key, session_id=session_id,
                                  chain_id=self.chain_id)
            result = response.unwrap()
            return {"receipt": "0x" + result.report.hex(),
                    "signature": "0x" + result.signed_report.hex()}
        raise RpcError(ErrorCode.UNKNOWN_METHOD,
                       f"{method} has no equivalent in the reference's wire")

    def stream(self, method: str, params: dict[str, Any], *, cipher: Any,
               payload: bytes | None = None) -> LumerinStream:
        if method != "session.prompt" or payload is None:
            raise RpcError(ErrorCode.UNKNOWN_METHOD, f"{method} does not stream here")
        if params.get("api", "chat") != "chat":
            raise RpcError(ErrorCode.BAD_REQUEST, f"provider {self.endpoint} speaks the "
                           "reference wire, which carries chat completions only")
        return LumerinStream(self, str(params["sessionId"]), payload)

    async def cipher_for(self, session_key: Any) -> None:
        """Nothing to set up: the reference encrypts answers to the wallet's own key."""
        return None

    async def connect(self) -> None:
        await self.ping()

    async def close(self) -> None:
        return None


class LumerinStream:
    """One ``session.prompt`` answer as our consumer reads streams: SSE events for a
    streamed request, the whole completion JSON as the one chunk otherwise; ``result``
    carries the last usage a chunk reported (the reference signs no trailer)."""

    def __init__(self, link: LumerinProvider, session_id: str, body: bytes) -> None:
        self._link = link
        self._session_id = session_id
        self._body = body
        try:
            parsed = bounded_json.loads(body, max_bytes=MAX_FRAME_BYTES)
        except ValueError:
            parsed = {}
        self._streamed = bool(parsed.get("stream")) if isinstance(parsed, dict) else False
        self._chunks: AsyncIterator[bytes] | None = None
        self._calls: Any = None
        self.result: dict[str, Any] | None = None

    async def start(self) -> None:
        if self._chunks is not None:
            return
        key = await self._link._provider_key()
        request = prompt_request(self._link.signer, session_id=self._session_id,
                                 body=self._body)
        self._calls = lumerin_call(self._link.host, self._link.port, request,
                                   SessionPromptRes, timeout=self._link.frame_timeout,
                                   first_timeout=self._link.first_frame_timeout)
        self._chunks = prompt_chunks(self._calls, user_key=self._link.signer,
                                     provider_public_key=key)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        await self.start()
        assert self._chunks is not None
        try:
            plain = await self._chunks.__anext__()
        except StopAsyncIteration:
            self.result = self.result or {}
            await self.aclose()
            raise
        except BaseException:
            await self.aclose()
            raise
        self._note_usage(plain)
        return b"data: " + plain.strip() + b"\n\n" if self._streamed else plain

    async def relay(self, sink: ChunkSink) -> None:
        """The rest of the stream into ``sink`` (one connection per request: nothing to
        gain from the reader's side here, so simply in order)."""
        try:
            await relay_chunks(self, sink)
        except BaseException:
            await self.aclose()
            raise

    def _note_usage(self, plain: bytes) -> None:
        if b'"usage"' not in plain:
            return
        with contextlib.suppress(ValueError):
            doc = bounded_json.loads(plain, max_bytes=MAX_FRAME_BYTES)
            if isinstance(doc, dict) and isinstance(doc.get("usage"), dict):
                self.result = {"usage": doc["usage"]}

    async def aclose(self) -> None:
        """Stop early: closing the connection is the reference's only cancel."""
        calls, self._calls = self._calls, None
        if calls is not None:
            with contextlib.suppress(Exception):
                await calls.aclose()

    async def __aenter__(self) -> LumerinStream:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


class _AutoLink:
    """Decides on first use which wire ``endpoint`` speaks, then delegates."""

    def __init__(self, pool: ProviderPool, endpoint: str, provider: str) -> None:
        self._pool = pool
        self._endpoint = endpoint
        self._provider = provider
        self._lock = asyncio.Lock()

    async def _resolve(self) -> ProviderLink:
        async with self._lock:
            known = self._pool.chosen(self._endpoint, self._provider)
            if known is not None:
                return known
            ws = self._pool.rpc.get(self._endpoint, self._provider)
            try:
                await ws.connect()
                link: ProviderLink = ws
            except RpcUnavailable as exc:  # timeouts included
                ref = self._pool.reference(self._endpoint, self._provider)
                try:
                    await ref.ping()
                except (RpcError, RpcUnavailable) as not_ref:
                    log.debug("reference_wire_probe_failed", endpoint=self._endpoint,
                              error=str(not_ref))
                    raise exc from None
                log.info("provider_speaks_reference_wire", endpoint=self._endpoint,
                         provider=self._provider)
                link = ref
            self._pool.remember(self._endpoint, self._provider, link)
            return link

    @property
    def connected(self) -> bool:
        known = self._pool.chosen(self._endpoint, self._provider)
        return known is not None and known.connected

    async def call(self, method: str, params: dict[str, Any], *, cipher: Any = None,
                   payload: bytes | None = None,
                   first_frame_timeout: float | None = None) -> dict[str, Any]:
        link = await self._resolve()
        return await link.call(method, params, cipher=cipher, payload=payload,
                               first_frame_timeout=first_frame_timeout)

    def stream(self, method: str, params: dict[str, Any], *, cipher: Any,
               payload: bytes | None = None) -> Any:
        known = self._pool.chosen(self._endpoint, self._provider)
        if known is None:  # cipher_for() resolves first; this is a programming error
            raise RpcUnavailable(f"wire of {self._endpoint} not known yet")
        return known.stream(method, params, cipher=cipher, payload=payload)

    async def cipher_for(self, session_key: Any) -> Any:
        return await (await self._resolve()).cipher_for(session_key)

    async def close(self) -> None:
        known = self._pool.chosen(self._endpoint, self._provider)
        if known is not None:
            await known.close()


class ProviderPool:
    """One link per (endpoint, provider): ``RpcPool``'s WebSocket clients, reference-wire
    links, or links that find out which on first use (``wire``)."""

    def __init__(self, rpc: RpcPool, chain_id: int, *, wire: Wire = "auto") -> None:
        self.rpc = rpc
        self.chain_id = chain_id
        self.wire = wire
        self._reference: dict[tuple[str, str], LumerinProvider] = {}
        self._chosen: dict[tuple[str, str], ProviderLink] = {}

    @property
    def signer(self) -> Signer:
        return self.rpc.signer

    def __len__(self) -> int:
        return len(self.rpc) + len(self._reference)

    @property
    def connected(self) -> int:
        return self.rpc.connected

    def get(self, endpoint: str, provider_address: str) -> ProviderLink:
        if self.wire == "mor-rpc":
            return self.rpc.get(endpoint, provider_address)
        if self.wire == "reference":
            return self.reference(endpoint, provider_address)
        return self.chosen(endpoint, provider_address) or _AutoLink(self, endpoint,
                                                                    provider_address)

    def reference(self, endpoint: str, provider_address: str) -> LumerinProvider:
        key = (endpoint, provider_address.lower())
        link = self._reference.get(key)
        if link is None:
            options = self.rpc.client_options
            link = LumerinProvider(
                endpoint, self.signer, provider_address, self.chain_id,
                connect_timeout=options.get("connect_timeout", 3.0),
                first_frame_timeout=options.get("first_frame_timeout", 90.0),
                frame_timeout=options.get("frame_timeout", 90.0))
            self._reference[key] = link
        return link

    def chosen(self, endpoint: str, provider_address: str) -> ProviderLink | None:
        return self._chosen.get((endpoint, provider_address.lower()))

    def remember(self, endpoint: str, provider_address: str, link: ProviderLink) -> None:
        self._chosen[(endpoint, provider_address.lower())] = link

    async def discard(self, endpoint: str, provider_address: str) -> None:
        """Forget a provider (its endpoint changed on chain): the wire is asked anew."""
        key = (endpoint, provider_address.lower())
        self._chosen.pop(key, None)
        self._reference.pop(key, None)
        await self.rpc.discard(endpoint, provider_address)

    async def close(self) -> None:
        self._chosen.clear()
        self._reference.clear()
        await self.rpc.close()
