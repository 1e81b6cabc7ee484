"""Build and check each method's messages, both directions, as the reference does.

Consumer → provider requests are signed by the consumer's **wallet** key; the
reference provider remembers the ``key`` of the latest ``session.request`` per user
address and checks every later request of that user against it, so a consumer
must sign everything with the one key it announced (we use the wallet key, as Go).

Provider → consumer results are signed by the provider's wallet key, whose 65-byte
uncompressed public key the consumer learns from ``session.request``'s result
(``message``). Completion chunks are ECIES-encrypted to the user's ``key``; the
prompt itself travels in the clear (TLS is not used by the reference either).

A ``session.prompt`` answer is a stream of ``SessionPromptRes``: one per backend
chunk — for ``stream: true`` each ``chat.completion.chunk`` JSON, then the JSON
string ``"[DONE]"``; otherwise a single ``chat.completion`` — and then EOF. A model
(HTTP) error is one *signed* error whose ``message`` is ECIES-hex of
``{"providerModelError": <the backend's error JSON>}``; any other failure one
*unsigned* error in plain text (``data.signature`` ``0x00``).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from proxy_router import bounded_json

from ..errors import ErrorCode, RpcError, RpcUnavailable
from ..signing import Signer, public_key_to_address
from . import ecies
from .messages import (
    ERROR_CODE,
    PING,
    SESSION_PROMPT,
    SESSION_REPORT,
    SESSION_REQUEST,
    PingReq,
    PongRes,
    Request,
    Response,
    RpcErrorBody,
    RpcErrorData,
    SessionPromptReq,
    SessionPromptRes,
    SessionReportReq,
    SessionReportRes,
    SessionReq,
    SessionRes,
    hash_hex,
    new_request_id,
    now_ms,
    to_rpc_error,
    user_key_matches,
)
from .signatures import Approval, Report, normalize_public_key, recover_blob_signer, sign_blob

DONE = "[DONE]"
DONE_PLAINTEXT = b'"[DONE]"'
"""The end-of-stream chunk's plaintext: ``json.Marshal("[DONE]")``."""
PING_NONCE_BYTES = 8
_UINT32_MAX = 2**32 - 1
_MAX_PLAINTEXT = 64 << 20


# -- consumer: requests -------------------------------------------------------------------
def ping_request(signer: Signer, nonce: bytes | None = None,
                 request_id: str = "0") -> Request[PingReq]:
    """``network.ping`` with 8 random nonce bytes (the reference's id is ``"0"``)."""
    nonce = os.urandom(PING_NONCE_BYTES) if nonce is None else nonce
    return Request(request_id, PING, PingReq(nonce).signed(signer))


def session_request(signer: Signer, *, bid_id: str | bytes, spend: int,
                    request_id: str | None = None,
                    timestamp: int | None = None) -> Request[SessionReq]:
    """``session.request`` for ``bid_id``; ``key`` is the signer's uncompressed public key."""
    if spend < 0:
        raise ValueError("spend must be non-negative")
    params = SessionReq(user=signer.address, key=signer.public_key, spend=spend,
                        timestamp=timestamp or now_ms(), bid_id=hash_hex(bid_id))
    return Request(request_id or new_request_id(), SESSION_REQUEST, params.signed(signer))


def prompt_request(signer: Signer, *, session_id: str | bytes, body: str | bytes,
                   request_id: str | None = None,
                   timestamp: int | None = None) -> Request[SessionPromptReq]:
    """``session.prompt`` carrying the OpenAI request body (a JSON text) in ``message``."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    params = SessionPromptReq(session_id=hash_hex(session_id), message=text,
                              timestamp=timestamp or now_ms())
    return Request(request_id or new_request_id(), SESSION_PROMPT, params.signed(signer))


def report_request(signer: Signer, *, session_id: str | bytes, request_id: str | None = None,
                   timestamp: int | None = None) -> Request[SessionReportReq]:
    """``session.report``: ``message`` is the session id as lower-case 0x-hex."""
    params = SessionReportReq(message=hash_hex(session_id), timestamp=timestamp or now_ms())
    return Request(request_id or new_request_id(), SESSION_REPORT, params.signed(signer))


# -- consumer: checking results -----------------------------------------------------------
def check_pong(response: Response[PongRes], *, provider: str, nonce: bytes) -> PongRes:
    """The pong, signed by ``provider``'s address and echoing ``nonce``."""
    pong = response.unwrap()
    pong.verify_address(provider)
    if pong.nonce != nonce:
        raise RpcError(ErrorCode.BAD_SIGNATURE, "pong does not echo the ping's nonce")
    return pong


@dataclass(frozen=True, slots=True)
class OpenedSession:
    """What a checked ``session.request`` result gives the consumer."""

    provider_public_key: bytes
    """65-byte key: verifies every later result and is what nothing else tells us."""
    approval: bytes
    approval_sig: bytes
    decoded: Approval
    result: SessionRes


def check_session_response(response: Response[SessionRes], *, provider: str, user: str,
                           bid_id: str | bytes, chain_id: int) -> OpenedSession:
    """Check the provider's answer to ``session.request`` before spending on it.

    The reference only checks that ``message`` (the key) signed the result; we also
    require that key to be ``provider``'s, the approval to be signed by ``provider``
    and to name this bid, chain and user.
    """
    res = response.unwrap()
    key = normalize_public_key(res.pub_key)
    res.verify(key)
    if public_key_to_address(key).lower() != provider.lower():
        raise RpcError(ErrorCode.WRONG_PROVIDER, "session answered by another provider's key")
    if recover_blob_signer(res.approval, res.approval_sig).lower() != provider.lower():
        raise RpcError(ErrorCode.BAD_SIGNATURE, "approval not signed by the provider")
    approval = Approval.decode(res.approval)
    if (approval.bid_id != hash_hex(bid_id) or approval.chain_id != chain_id
            or approval.user.lower() != user.lower() or res.user.lower() != user.lower()):
        raise RpcError(ErrorCode.BAD_REQUEST, "approval is for another bid, chain or user")
    return OpenedSession(key, res.approval, res.approval_sig, approval, res)


def check_report_response(response: Response[SessionReportRes], *, provider_public_key: bytes,
                          session_id: str | bytes, chain_id: int) -> Report:
    """The signed report of ``session_id``: result signature and EIP-191 report signature
    both by the provider; returns the decoded report (``.report``/``.signed_report`` of
    the result go to ``closeSession``)."""
    res = response.unwrap()
    res.verify(provider_public_key)
    provider = public_key_to_address(normalize_public_key(provider_public_key))
    if recover_blob_signer(res.report, res.signed_report) != provider:
        raise RpcError(ErrorCode.BAD_SIGNATURE, "report not signed by the provider")
    report = Report.decode(res.report)
    if report.session_id != hash_hex(session_id) or report.chain_id != chain_id:
        raise RpcError(ErrorCode.BAD_REQUEST, "report is for another session or chain")
    return report


def decrypt_model_error(body: RpcErrorBody, *, user_key: ecies.KeyAgreement | bytes,
                        provider_public_key: bytes) -> RpcError:
    """A signed (model) error → ``BACKEND_ERROR`` with ``data["providerModelError"]``."""
    body.verify(provider_public_key)
    plain = ecies.decrypt_hex(user_key, body.message, max_bytes=_MAX_PLAINTEXT)
    try:
        payload = bounded_json.loads(plain, max_bytes=_MAX_PLAINTEXT)
    except ValueError as exc:
        raise RpcError(ErrorCode.BACKEND_ERROR, "undecodable model error") from exc
    detail = payload.get("providerModelError") if isinstance(payload, dict) else None
    return RpcError(ErrorCode.BACKEND_ERROR, "provider's model returned an error",
                    {"providerModelError": detail, "lumerin_code": body.code})


async def prompt_chunks(responses: AsyncIterator[Response[SessionPromptRes]], *,
                        user_key: ecies.KeyAgreement | bytes,
                        provider_public_key: bytes) -> AsyncIterator[bytes]:
    """Verified, decrypted chunk plaintexts (each a JSON text) of a ``session.prompt``.

    Stops at the ``"[DONE]"`` chunk (not yielded) or at EOF. Raises ``RpcError``:
    ``BAD_SIGNATURE``/``DECRYPTION_FAILED`` for a forged or foreign chunk, the
    classified code of an infrastructure error, ``BACKEND_ERROR`` for a model error;
    ``RpcUnavailable`` when the stream ends before any chunk (as the reference does).
    """
    any_chunk = False
    async for response in responses:
        if response.error is not None:
            if response.error.is_signed:
                raise decrypt_model_error(response.error, user_key=user_key,
                                          provider_public_key=provider_public_key)
            raise to_rpc_error(response.error)
        res = response.unwrap()
        res.verify(provider_public_key)
        plain = ecies.decrypt_hex(user_key, res.message, max_bytes=_MAX_PLAINTEXT)
        any_chunk = True
        if plain.strip() == DONE_PLAINTEXT:
            return
        yield plain
    if not any_chunk:
        raise RpcUnavailable("provider closed connection without sending any data")


# -- provider: checking requests ------------------------------------------------------------
def check_session_request(params: SessionReq, *, require_key_of_user: bool = True) -> bytes:
    """Verify ``session.request`` params; returns the user's 65-byte key to remember.

    The reference verifies the signature against ``params.key`` only; by default we
    also require ``key`` to be ``user``'s (a Go consumer always sends its wallet key).
    """
    key = normalize_public_key(params.key)
    params.verify(key)
    if require_key_of_user and not user_key_matches(params):
        raise RpcError(ErrorCode.BAD_SIGNATURE, "key does not belong to user")
    return key


def check_fresh(timestamp_ms: int, *, max_age_ms: int, max_skew_ms: int = 60_000,
                now: int | None = None) -> None:
    """``STALE_MESSAGE`` for a timestamp too old or too far ahead (the reference has no
    such check: a provider adds it to make captured requests expire)."""
    current = now_ms() if now is None else now
    if timestamp_ms < current - max_age_ms or timestamp_ms > current + max_skew_ms:
        raise RpcError(ErrorCode.STALE_MESSAGE, "request timestamp outside the accepted window")


# -- provider: results ------------------------------------------------------------------------
def pong_response(request: Request[PingReq], signer: Signer,
                  version: str = "") -> Response[PongRes]:
    """``network.ping`` answer echoing the nonce (``version`` omitted when empty)."""
    return Response(request.id, PongRes(request.params.nonce, version).signed(signer))


def session_response(request: Request[SessionReq], signer: Signer, *, chain_id: int,
                     timestamp: int | None = None) -> Response[SessionRes]:
    """``session.request`` answer: a fresh approval for the request's bid and user,
    EIP-191 signed, and the provider's public key in ``message``."""
    ts = timestamp or now_ms()
    params = request.params
    approval = Approval(params.bid_id, chain_id, params.user, ts).encode()
    res = SessionRes(pub_key=signer.public_key, approval=approval,
                     approval_sig=sign_blob(signer, approval), user=params.user, timestamp=ts)
    return Response(request.id, res.signed(signer))


def prompt_chunk_response(request_id: str, signer: Signer, *, user_public_key: bytes,
                          plaintext: bytes,
                          timestamp: int | None = None) -> Response[SessionPromptRes]:
    """One completion chunk (its JSON text) encrypted to the user's key, then signed."""
    res = SessionPromptRes(message=ecies.encrypt_hex(user_public_key, plaintext),
                           timestamp=timestamp or now_ms())
    return Response(request_id, res.signed(signer))


def prompt_done_response(request_id: str, signer: Signer, *,
                         user_public_key: bytes) -> Response[SessionPromptRes]:
    """The end-of-stream chunk a streamed completion ends with (then close: EOF)."""
    return prompt_chunk_response(request_id, signer, user_public_key=user_public_key,
                                 plaintext=DONE_PLAINTEXT)


def model_error_response(request_id: str, signer: Signer, *, user_public_key: bytes,
                         provider_model_error: Any,
                         timestamp: int | None = None) -> Response[Any]:
    """The backend's HTTP error (parsed JSON, or ``{"error":{"message","type"}}``),
    encrypted and signed like the reference's ``ResponseError``."""
    plain = json.dumps({"providerModelError": provider_model_error},
                       separators=(",", ":")).encode()
    body = RpcErrorBody(ecies.encrypt_hex(user_public_key, plain), ERROR_CODE,
                        RpcErrorData(timestamp or now_ms(), b""))
    return Response(request_id, None, body.signed(signer))


def report_response(request_id: str, signer: Signer, *, session_id: str | bytes, chain_id: int,
                    tps_scaled1000: int, ttft_ms: int, input_tokens: int, output_tokens: int,
                    timestamp: int | None = None) -> Response[SessionReportRes]:
    """``session.report`` answer: the ABI report (figures clamped to uint32), EIP-191
    signed in ``signedReport``, the whole result signed."""
    ts = timestamp or now_ms()

    def u32(value: int) -> int:
        return max(0, min(int(value), _UINT32_MAX))

    report = Report(hash_hex(session_id), chain_id, ts, u32(tps_scaled1000), u32(ttft_ms),
                    u32(input_tokens), u32(output_tokens)).encode()
    res = SessionReportRes(report=report, signed_report=sign_blob(signer, report), timestamp=ts)
    return Response(request_id, res.signed(signer))


__all__ = [
    "DONE",
    "DONE_PLAINTEXT",
    "OpenedSession",
    "check_fresh",
    "check_pong",
    "check_report_response",
    "check_session_request",
    "check_session_response",
    "decrypt_model_error",
    "model_error_response",
    "ping_request",
    "pong_response",
    "prompt_chunk_response",
    "prompt_chunks",
    "prompt_done_response",
    "prompt_request",
    "report_request",
    "report_response",
    "session_request",
    "session_response",
]
