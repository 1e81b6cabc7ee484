"""MOR-RPC wire format: frame shapes, builders, validation and AAD layout.

Every frame is one WebSocket text message holding a JSON object. Kinds:

* request       ``{id, method, params, from, timestamp, nonce, signature}``
* notification  ``{method, params, from, timestamp, nonce, signature}`` (no id, no reply;
  only the transport's ``rpc.credit`` and ``rpc.cancel``)
* response      ``{id, result | error, re, timestamp, nonce, signature}``
* chunk         ``{id, seq, chunk}`` — base64 AES-GCM ciphertext, *not* signed

``from`` is the address the sender claims; a frame whose signature recovers to
another address is ``BAD_SIGNATURE`` (ecrecover always yields *some* address,
so without the claim tampering would surface later as a confusing identity
error). ``re`` is the request's nonce: it binds a response to the exact request
it answers, so a recorded response cannot be replayed against a later request.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeGuard

from proxy_router import bounded_json

from .canonical import MAX_SAFE_INTEGER, canonical_json
from .errors import ErrorCode, RpcError

PROTOCOL = "mor-rpc/1"
WS_PATH = "/mor-rpc"
STREAM_WINDOW = 256
"""Chunks a provider may send ahead of the consumer's ``rpc.credit`` grants."""
MAX_FRAME_BYTES = 8 * 1024 * 1024
"""Largest frame a request may be: a larger one fails that request (``PAYLOAD_TOO_LARGE``)."""
HARD_FRAME_BYTES = 2 * MAX_FRAME_BYTES
"""Largest WebSocket message read at all: past it the peer is abusive and the link closes."""
MAX_PAYLOAD_BYTES = (MAX_FRAME_BYTES - 64 * 1024) * 3 // 4 - 16
"""Largest plaintext prompt that still fits a frame once sealed (AES-GCM tag) and base64'd,
with 64 KiB for the envelope; the consumer refuses larger ones with 413 before sealing."""
MAX_ID_LENGTH = 128
SSE_FORMAT = "sse"
PromptApi = Literal["chat", "completions", "embeddings"]
"""What a ``session.prompt`` asks (its ``api`` param; absent means ``chat``): the OpenAI
route of the same name on the provider's model server."""
PROMPT_APIS: tuple[PromptApi, ...] = ("chat", "completions", "embeddings")
"""``session.prompt`` param ``format``, the one chunk format of protocol version 1: stream
chunks are ready-to-write SSE bytes (``data: {…}\n\n``, one or more events per chunk)."""

CREDIT = "rpc.credit"
CANCEL = "rpc.cancel"
PING = "network.ping"

RequestId = int | str

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def encode_frame(frame: dict[str, Any]) -> str:
    """Compact JSON text for the wire (the signature covers the canonical form, not this)."""
    return _dumps(frame)


def decode_frame(text: str | bytes, max_bytes: int = HARD_FRAME_BYTES) -> dict[str, Any]:
    """Parse one frame, bounded in size and depth; anything but a JSON object is
    ``BAD_REQUEST`` (never a crash: see ``bounded_json``)."""
    try:
        frame = bounded_json.loads(text, max_bytes=max_bytes)
    except bounded_json.JsonTooLarge as exc:
        raise RpcError(ErrorCode.PAYLOAD_TOO_LARGE, str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RpcError(ErrorCode.BAD_REQUEST, f"frame is not valid JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise RpcError(ErrorCode.BAD_REQUEST, "frame must be a JSON object")
    return frame


def request_frame(request_id: RequestId, method: str, params: dict[str, Any],
                  sender: str) -> dict[str, Any]:
    """Unsigned request (``Signer.sign_frame`` adds timestamp, nonce, signature)."""
    return {"id": request_id, "method": method, "params": params, "from": sender}


def notification_frame(method: str, params: dict[str, Any], sender: str) -> dict[str, Any]:
    return {"method": method, "params": params, "from": sender}


def result_frame(request_id: RequestId | None, result: dict[str, Any],
                 re: str | None) -> dict[str, Any]:
    return {"id": request_id, "result": result, "re": re}


def error_frame(request_id: RequestId | None, error: RpcError, re: str | None) -> dict[str, Any]:
    return {"id": request_id, "error": error.to_dict(), "re": re}


def chunk_text(id_json: str, seq: int, chunk_b64: str) -> str:
    """A chunk frame built by formatting, not json.dumps: it is on the per-token path."""
    return f'{{"id":{id_json},"seq":{seq},"chunk":"{chunk_b64}"}}'


def payload_aad(request_id: RequestId, nonce: str) -> bytes:
    """AAD of a request's encrypted ``params.payload``: bound to that signed request."""
    return b"mor-rpc/1 payload\x00" + canonical_json([request_id, nonce])


def chunk_aad_prefix(request_id: RequestId, nonce: str) -> bytes:
    """AAD of chunk ``seq`` is this prefix + ``seq`` as 8 big-endian bytes.

    The request nonce is random and single-use (the replay guard enforces it),
    so chunks cannot be moved to another request even when ids repeat across
    consumer restarts; ``seq`` pins each chunk's position in its stream.
    """
    return b"mor-rpc/1 chunk\x00" + canonical_json([request_id, nonce]) + b"\x00"


def is_request_id(value: Any) -> TypeGuard[RequestId]:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value <= MAX_SAFE_INTEGER
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


def check_signed_envelope(frame: dict[str, Any]) -> None:
    """Types of the fields every signed frame carries; ``BAD_REQUEST`` otherwise."""
    ts = frame.get("timestamp")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise RpcError(ErrorCode.BAD_REQUEST, "timestamp must be integer seconds")
    nonce = frame.get("nonce")
    if not isinstance(nonce, str) or not 0 < len(nonce) <= 66:
        raise RpcError(ErrorCode.BAD_REQUEST, "nonce must be a hex string")
    if not isinstance(frame.get("signature"), str):
        raise RpcError(ErrorCode.BAD_SIGNATURE, "frame is not signed")


def check_request(frame: dict[str, Any]) -> None:
    """Shape of a request or notification (signature is verified separately)."""
    if "id" in frame and not is_request_id(frame["id"]):
        raise RpcError(ErrorCode.BAD_REQUEST, "id must be a non-negative integer or a string")
    if not isinstance(frame.get("method"), str):
        raise RpcError(ErrorCode.BAD_REQUEST, "method must be a string")
    if not isinstance(frame.get("params"), dict):
        raise RpcError(ErrorCode.BAD_REQUEST, "params must be an object")
    if not isinstance(frame.get("from"), str):
        raise RpcError(ErrorCode.BAD_REQUEST, "from must be the sender's address")
    check_signed_envelope(frame)
