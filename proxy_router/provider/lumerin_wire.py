"""The reference's raw-TCP MOR-RPC wire, served by our provider on its registered port.

Go proxy-routers and MorpheusUI buy by writing one JSON request per TCP connection
(``morrpc/lumerin``); ``dualport`` hands such connections to ``LumerinWire.handle``.
Each method maps onto the same ``ProviderService`` core our ``mor-rpc/1`` calls, so
the checks, capacity slots, metering and receipts are the same on both wires:

- ``network.ping``: a pong signed by our wallet key (how a consumer learns that key);
- ``session.request``: ``ProviderService.approve``. The request must be signed by the
  ``key`` it carries and that key must be the wallet key of the ``user`` it names; it
  is remembered per user (bounded, most recent users kept, never logged) to verify
  that user's later requests, and every answer to the user is ECIES-encrypted to it;
- ``session.prompt``: ``ProviderService.prompt`` for the session's user; one signed
  ``SessionPromptRes`` per backend event, then ``"[DONE]"`` for a stream, then EOF;
- ``session.report``: ``ProviderService.report``;
- what else the reference dispatches (agent tools, audio upload): its error shape.

Authentication: a prompt or report does not name its signer. As the reference does,
the session's user is read (from our cache or the chain) and the request must verify
against that user's remembered key. A user whose key we do not remember (we
restarted, it was evicted, the session was opened over mor-rpc/1) is still served when
the signature recovers to that user's own address: that is the key the user would have
announced, since we accept no other. Each request also passes the replay guard of our
mor-rpc/1 frames: its timestamp within the window, its signature never seen before.

Timestamps: the wire structs carry Unix **milliseconds**, as the reference writes
them, but the approval and report blobs we sign are ``ProviderService``'s, in
**seconds**: the contract enforces the approval's age in seconds, so a millisecond
stamp (what the Go provider signs) would never expire. A consumer hands both blobs to
the contract unchanged.

Cancellation: the reference has no cancel message; a consumer that stops reading closes
its connection. While a prompt runs, the connection's reader is watched: its end (the
consumer sends nothing after its one request, so an end is its close) cancels the
prompt at once, which aborts the backend request and frees the slot exactly as
``rpc.cancel`` does on our wire, instead of waiting for a write to fail, which needs a
token to write.

Errors: ``RpcError`` codes become the reference's texts (``error_text``, which Go
consumers and our ``classify_error`` read back); a signature that does not verify is
the reference's "Failed to authenticate signature", and no work is done for it; a
backend HTTP error is a signed, encrypted ``model_error_response``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import structlog
from eth_utils import to_checksum_address

from proxy_router import __version__, bounded_json
from proxy_router.metrics import Metrics
from proxy_router.morrpc import ErrorCode, ReplayGuard, RpcError, Signer
from proxy_router.morrpc.lumerin import (
    PING,
    SESSION_PROMPT,
    SESSION_REPORT,
    SESSION_REQUEST,
    LumerinLimits,
    Request,
    Response,
    SessionPromptReq,
    SessionReportReq,
    SessionReportRes,
    SessionReq,
    SessionRes,
    Signed,
    check_session_request,
    error_response,
    error_text,
    handle_lumerin_connection,
    model_error_response,
    now_ms,
    pong_response,
    prompt_chunk_response,
    prompt_done_response,
)
from proxy_router.morrpc.protocol import MAX_FRAME_BYTES
from proxy_router.morrpc.signing import public_key_to_address
from proxy_router.netguard import remote_key
from proxy_router.provider.service import ProviderService

log = structlog.get_logger(__name__)

AUTH_FAILED = "Failed to authenticate signature"
"""The reference's text for a request its user's key did not sign."""
MAX_USERS = 10_000
OK = "OK"
PEER_GONE = "PEER_GONE"


class UserKeys:
    """The wallet key each user announced, for the ``limit`` most recently seen users."""

    def __init__(self, limit: int = MAX_USERS) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._keys: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:  # never the keys themselves
        return f"UserKeys({len(self._keys)} of {self.limit})"

    def get(self, user: str) -> bytes | None:
        key = self._keys.get(user.lower())
        if key is not None:
            self._keys.move_to_end(user.lower())
        return key

    def put(self, user: str, key: bytes) -> None:
        self._keys[user.lower()] = key
        self._keys.move_to_end(user.lower())
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)


def _auth_failed() -> RpcError:
    return RpcError(ErrorCode.BAD_SIGNATURE, AUTH_FAILED)


def _reference_text(error: RpcError) -> str:
    """The reference's error text for ``error``: one text for every authentication
    failure (whose key signed is none of the peer's business), else ``error_text``."""
    if error.code in (ErrorCode.BAD_SIGNATURE, ErrorCode.NOT_SESSION_USER):
        return AUTH_FAILED
    return error_text(error)


def _model_error(error: RpcError) -> Any | None:
    """The ``providerModelError`` of a backend's HTTP refusal (None for other failures):
    OpenAI's error shape, with our generic message (backend texts stay in our log)."""
    status = error.data.get("status") if isinstance(error.data, dict) else None
    if error.code != ErrorCode.BACKEND_ERROR or not isinstance(status, int):
        return None
    return {"error": {"message": error.message, "type": "provider_model_error", "code": status}}


def _chat_body(message: str) -> dict[str, Any]:
    """The OpenAI chat request a prompt carries; ``stream`` absent means not streamed,
    as in OpenAI's API and the reference (our own wire streams by default)."""
    try:
        body = bounded_json.loads(message, max_bytes=MAX_FRAME_BYTES)
    except bounded_json.JsonTooLarge:
        raise RpcError(ErrorCode.PAYLOAD_TOO_LARGE, "prompt too large") from None
    except ValueError:
        raise RpcError(ErrorCode.BAD_REQUEST, "message is not a JSON object") from None
    if not isinstance(body, dict):
        raise RpcError(ErrorCode.BAD_REQUEST, "message is not a JSON object")
    return {**body, "stream": body.get("stream") is True}


class Hangup:
    """Cancels ``task`` when ``reader`` ends: the consumer closed its connection.

    A reference consumer writes its one request and then only reads, so the end of what
    it sends is its close (a consumer that half-closed after its request would be taken
    for gone: none of the reference's does). Watched only while a prompt runs."""

    __slots__ = ("_reader", "_task", "_watcher", "fired")

    def __init__(self, reader: asyncio.StreamReader, task: asyncio.Task[Any]) -> None:
        self._reader = reader
        self._task = task
        self._watcher: asyncio.Task[None] | None = None
        self.fired = False

    def watch(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._wait())

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def _wait(self) -> None:
        with contextlib.suppress(OSError):
            while await self._reader.read(4096):
                pass  # bytes after the request: not ours to read, and not an end
        if not self._task.done():
            self.fired = True
            self._task.cancel()


class LumerinWire:
    """Serves one reference-wire connection per ``handle`` call, on ``service``'s core.

    ``signer`` is the provider's wallet (default: the service's account); ``replay_guard``
    is best shared with the mor-rpc/1 server; ``limits`` and the timeouts bound what a
    peer may send and how long it may take to send it or to read the answer.
    """

    def __init__(self, service: ProviderService, signer: Signer | None = None, *,
                 replay_guard: ReplayGuard | None = None, metrics: Metrics | None = None,
                 limits: LumerinLimits | None = None, request_timeout_s: float = 30.0,
                 write_timeout_s: float = 60.0, max_users: int = MAX_USERS) -> None:
        self.service = service
        self.signer = signer or Signer(service.account)
        if self.signer.address != service.address:
            raise ValueError("the wire must sign with the provider's own wallet")
        self.replay = replay_guard
        self.metrics = metrics or service.metrics
        self.limits = limits or LumerinLimits()
        self.request_timeout_s = request_timeout_s
        self.write_timeout_s = write_timeout_s
        self.keys = UserKeys(max_users)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     first_bytes: bytes) -> None:
        """``serve_app(raw=...)``'s handler: one request, its answers, then close."""
        remote = remote_key(writer.transport)
        task = asyncio.current_task()
        assert task is not None
        hangup = Hangup(reader, task)

        def serve(request: Request[Any]) -> AsyncIterator[Response[Any]]:
            return self.serve(request, remote, hangup)

        try:
            await handle_lumerin_connection(reader, writer, serve, first_bytes,
                                            request_timeout=self.request_timeout_s,
                                            write_timeout=self.write_timeout_s,
                                            limits=self.limits)
        except asyncio.CancelledError:
            if not hangup.fired or task.uncancel() > 0:  # someone else's cancel too
                raise
            log.info("reference_prompt_cancelled", remote=remote)
        finally:
            hangup.stop()

    async def serve(self, request: Request[Any], remote: str | None = None,
                    hangup: Hangup | None = None) -> AsyncIterator[Response[Any]]:
        """The responses to one parsed request; a refusal is one unsigned error (counted
        by code, like every request)."""
        code = PEER_GONE
        try:
            async with contextlib.aclosing(self._dispatch(request, remote, hangup)) \
                    as responses:
                async for response in responses:
                    if response.error is not None:  # a model error, signed
                        code = str(ErrorCode.BACKEND_ERROR)
                    yield response
            if code == PEER_GONE:
                code = OK
        except RpcError as exc:
            code = str(exc.code)
            log.debug("reference_request_refused", method=request.method, code=code,
                      remote=remote)
            yield error_response(request.id, _reference_text(exc))
        except Exception:
            code = str(ErrorCode.INTERNAL)
            raise
        finally:
            self.metrics.reference_requests.labels(request.method, code).inc()

    def _dispatch(self, request: Request[Any], remote: str | None, hangup: Hangup | None
                  ) -> AsyncGenerator[Response[Any], None]:
        if request.method == PING:
            return self._ping(request)
        if request.method == SESSION_REQUEST:
            return self._session_request(request, remote)
        if request.method == SESSION_PROMPT:
            return self._prompt(request, hangup)
        if request.method == SESSION_REPORT:
            return self._report(request)
        raise RpcError(ErrorCode.UNKNOWN_METHOD,
                       f"unknown method: {request.method} is not served by this provider")

    # -- methods ------------------------------------------------------------------------

    async def _ping(self, request: Request[Any]) -> AsyncGenerator[Response[Any], None]:
        yield pong_response(request, self.signer, __version__)

    async def _session_request(self, request: Request[Any], remote: str | None
                               ) -> AsyncGenerator[Response[Any], None]:
        params = request.params
        assert isinstance(params, SessionReq)
        self._check_fresh(params)
        try:
            key = check_session_request(params)  # signed by ``key``, the wallet of ``user``
        except RpcError as exc:
            if exc.code == ErrorCode.BAD_SIGNATURE:
                raise _auth_failed() from None
            raise
        self._check_replay(params, params.user)
        grant = await self.service.approve(params.bid_id, params.user, remote=remote)
        self.keys.put(params.user, key)
        result = SessionRes(pub_key=self.signer.public_key, approval=grant.approval,
                            approval_sig=grant.signature, user=params.user,
                            timestamp=now_ms())
        yield Response(request.id, result.signed(self.signer))

    async def _prompt(self, request: Request[Any], hangup: Hangup | None = None
                      ) -> AsyncGenerator[Response[Any], None]:
        params = request.params
        assert isinstance(params, SessionPromptReq)
        self._check_fresh(params)
        user, key = await self._authenticate(params, params.session_id)
        body = _chat_body(params.message)
        if hangup is not None:
            hangup.watch()
        try:
            async with contextlib.aclosing(
                    self.service.prompt(params.session_id, user, body)) as items:
                async for item in items:
                    if isinstance(item, dict):  # a whole chat.completion
                        yield self._chunk(request.id, key, json.dumps(
                            item, separators=(",", ":"), ensure_ascii=False).encode())
                        continue
                    for event in item:
                        yield self._chunk(request.id, key, event)
        except RpcError as exc:
            if hangup is not None:
                hangup.stop()
            detail = _model_error(exc)
            if detail is None:
                raise
            yield model_error_response(request.id, self.signer, user_public_key=key,
                                       provider_model_error=detail)
            return
        if hangup is not None:  # the answer is whole: a close from here on is no cancel
            hangup.stop()
        if body["stream"]:
            yield prompt_done_response(request.id, self.signer, user_public_key=key)

    async def _report(self, request: Request[Any]) -> AsyncGenerator[Response[Any], None]:
        params = request.params
        assert isinstance(params, SessionReportReq)
        self._check_fresh(params)
        session_id = params.session_id
        user, _ = await self._authenticate(params, session_id)
        report, signature, _usage = await self.service.report(session_id, user)
        result = SessionReportRes(report=report, signed_report=signature, timestamp=now_ms())
        yield Response(request.id, result.signed(self.signer))

    # -- checks -------------------------------------------------------------------------

    def _chunk(self, request_id: str, key: bytes, plaintext: bytes) -> Response[Any]:
        return prompt_chunk_response(request_id, self.signer, user_public_key=key,
                                     plaintext=plaintext)

    async def _authenticate(self, params: Signed, session_id: str) -> tuple[str, bytes]:
        """The session's user, and the key to encrypt to, once ``params`` verified
        against that user's key (remembered, or recovered when it is the user's own)."""
        user = to_checksum_address((await self.service.session_of(session_id)).user)
        known = self.keys.get(user)
        try:
            if known is not None:
                params.verify(known)
                key = known
            else:
                key = params.recover_public_key()
                if public_key_to_address(key) != user:
                    raise _auth_failed()
                self.keys.put(user, key)
        except RpcError:
            raise _auth_failed() from None
        self._check_replay(params, user)
        return user, key

    def _check_fresh(self, params: Signed) -> None:
        """A stale request is refused before any chain read (its stamp is milliseconds)."""
        if self.replay is not None:
            self.replay.check_fresh(_timestamp_s(params))

    def _check_replay(self, params: Signed, user: str) -> None:
        """Once authenticated: a request is served once (its signature is its nonce)."""
        if self.replay is not None:
            self.replay.check(user, _timestamp_s(params),
                              "lumerin:" + params.get_signature().hex())


def _timestamp_s(params: Signed) -> int:
    timestamp: int = getattr(params, "timestamp")  # noqa: B009 -- every request struct has one
    return timestamp // 1000
