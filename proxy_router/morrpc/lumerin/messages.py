"""The reference's message structs (``morrpcmessage/request.go``), envelopes and methods.

Every struct below lists its fields in the Go declaration order with the Go
``json`` tags; ``GoStruct`` turns that into Go-exact bytes. Envelopes:

* request  ``{"id":"<string>","method":"<name>","params":{…}}`` (``RPCMessage``);
* response ``{"id":"<string>","result":{…}}`` or, on failure,
  ``{"id":"<string>","result":null,"error":{"message","code":400,"data":{"timestamp","signature"}}}``
  (``RpcResponse``: ``result`` is a pointer, so ``null``; ``error`` is ``omitempty``).

The request id is a string (Go: 8 hex characters; ``"0"`` for ping) and every
response echoes it. Timestamps are Unix **milliseconds**.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Self, TypeVar

from ..errors import ErrorCode, RpcError
from ..signing import Signer, keccak256, public_key_to_address
from .gojson import Field, GoStruct, Kind, bad, go_string
from .signatures import normalize_public_key, recover_message_key, sign_message_digest

PING = "network.ping"
SESSION_REQUEST = "session.request"
SESSION_PROMPT = "session.prompt"
SESSION_REPORT = "session.report"
AGENT_CALL_TOOL = "agent.call_tool"
AGENT_GET_TOOLS = "agent.get_tools"
STREAM_START = "session.prompt.stream.start"
STREAM_CHUNK = "session.prompt.stream.chunk"
STREAM_END = "session.prompt.stream.end"

ERROR_CODE = 400
"""The only ``RpcError.code`` the reference ever sends."""
UNSIGNED_ERROR_SIGNATURE = b"\x00"
"""``data.signature`` of an infrastructure error (``"0x00"``): "not signed, not encrypted".
An empty signature cannot be sent: Go's ``lib.HexString`` decoder rejects ``"0x"``."""

_SIG = 65
_HASH = 32
_TEXT = 4096


def now_ms() -> int:
    """The reference's timestamp: Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


def new_request_id() -> str:
    """A request id as the Go consumer makes them: 4 random bytes as hex."""
    return os.urandom(4).hex()


def hash_hex(value: str | bytes) -> str:
    """Validated lower-case 0x form of a 32-byte id (``ValueError`` otherwise)."""
    if isinstance(value, bytes):
        raw = value
    elif re.fullmatch(r"(0x)?[0-9a-fA-F]{64}", value):
        raw = bytes.fromhex(value.removeprefix("0x"))
    else:
        raise ValueError("a hash is 32 bytes of hex")
    if len(raw) != _HASH:
        raise ValueError("a hash is 32 bytes")
    return "0x" + raw.hex()


def _sig(tag: str = "signature", *, omitempty: bool = True) -> Field:
    return Field(tag, "signature", Kind.HEX, omitempty=omitempty, max_len=_SIG)


def _ts() -> Field:
    return Field("timestamp", "timestamp", Kind.UINT64)


# -- signed structs -----------------------------------------------------------------
class Signed(GoStruct):
    """A struct carrying a message signature (raw keccak of its Go JSON, v ∈ {0,1})."""

    __slots__ = ()

    def digest(self) -> bytes:
        """keccak256 of ``signing_input()``: what the signature signs."""
        return keccak256(self.signing_input())

    def signed(self, signer: Signer) -> Self:
        """A copy signed by ``signer`` (what the reference's ``generateSignature`` does)."""
        return self.with_signature(sign_message_digest(signer, self.digest()))

    def recover_public_key(self) -> bytes:
        """The 65-byte key that signed this message; ``BAD_SIGNATURE`` if unsigned or bad."""
        return recover_message_key(self.digest(), self.get_signature())

    def recover_address(self) -> str:
        """Checksum address of the signer (``crypto.Ecrecover`` + ``PubkeyToAddress``)."""
        return public_key_to_address(self.recover_public_key())

    def verify(self, public_key: bytes) -> None:
        """``BAD_SIGNATURE`` unless ``public_key`` (33/65 bytes) signed this message."""
        if self.recover_public_key() != normalize_public_key(public_key):
            raise RpcError(ErrorCode.BAD_SIGNATURE, "message not signed by the expected key")

    def verify_address(self, address: str) -> None:
        """``BAD_SIGNATURE`` unless ``address`` signed this message."""
        if self.recover_address().lower() != address.lower():
            raise RpcError(ErrorCode.BAD_SIGNATURE, "message not signed by the expected address")


@dataclass(frozen=True, slots=True)
class PingReq(Signed):
    """``network.ping`` params; ``signature`` has no ``omitempty`` (signed as ``"0x"``)."""

    FIELDS: ClassVar = (Field("nonce", "nonce", Kind.HEX, max_len=64), _sig(omitempty=False))
    nonce: bytes
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class PongRes(Signed):
    """``network.ping`` result; signed as ``{"nonce","version"?,"signature":"0x"}``."""

    FIELDS: ClassVar = (Field("nonce", "nonce", Kind.HEX, max_len=64),
                        Field("version", "version", Kind.STRING, omitempty=True, required=False,
                              max_len=256),
                        _sig(omitempty=False))
    nonce: bytes
    version: str = ""
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class SessionReq(Signed):
    """``session.request`` params: the user's key is its 65-byte uncompressed wallet key."""

    FIELDS: ClassVar = (_sig(), Field("user", "user", Kind.ADDRESS),
                        Field("key", "key", Kind.HEX, max_len=65),
                        Field("spend", "spend", Kind.BIGINT, required=False), _ts(),
                        Field("bidid", "bid_id", Kind.HASH))
    user: str
    key: bytes
    spend: int
    timestamp: int
    bid_id: str
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class SessionRes(Signed):
    """``session.request`` result: ``message`` is the provider's 65-byte public key."""

    FIELDS: ClassVar = (Field("message", "pub_key", Kind.HEX, max_len=65),
                        Field("approval", "approval", Kind.HEX, max_len=128),
                        Field("approvalSig", "approval_sig", Kind.HEX, max_len=_SIG),
                        Field("user", "user", Kind.ADDRESS), _ts(), _sig())
    pub_key: bytes
    approval: bytes
    approval_sig: bytes
    user: str
    timestamp: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class SessionPromptReq(Signed):
    """``session.prompt`` params: ``message`` is the OpenAI request body, in the clear."""

    FIELDS: ClassVar = (_sig(), Field("sessionid", "session_id", Kind.HASH),
                        Field("message", "message", Kind.STRING, max_len=1 << 30), _ts())
    session_id: str
    message: str
    timestamp: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class SessionPromptRes(Signed):
    """One ``session.prompt`` response: ``message`` is ECIES(chunk JSON) as bare hex."""

    FIELDS: ClassVar = (Field("message", "message", Kind.STRING, max_len=1 << 30), _sig(), _ts())
    message: str
    timestamp: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class SessionReportReq(Signed):
    """``session.report`` params: ``message`` is the session id (``common.Hash.Hex()``)."""

    FIELDS: ClassVar = (_sig(), Field("message", "message", Kind.STRING, max_len=66), _ts())
    message: str
    timestamp: int
    signature: bytes = b""

    @property
    def session_id(self) -> str:
        """The session ``message`` names, lower-case; ``BAD_REQUEST`` unless 32-byte 0x-hex."""
        if self.message.startswith("0x"):
            with contextlib.suppress(ValueError):
                return hash_hex(self.message)
        raise bad("session.report message must be a 0x-prefixed session id")


@dataclass(frozen=True, slots=True)
class SessionReportRes(Signed):
    """``session.report`` result: the ABI report and its EIP-191 signature."""

    FIELDS: ClassVar = (Field("message", "report", Kind.HEX, max_len=224),
                        Field("signedReport", "signed_report", Kind.HEX, max_len=_SIG),
                        _sig(), _ts())
    report: bytes
    signed_report: bytes
    timestamp: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class CallAgentToolReq(Signed):
    FIELDS: ClassVar = (Field("sessionid", "session_id", Kind.HASH),
                        Field("toolname", "tool_name", Kind.STRING, max_len=_TEXT),
                        Field("message", "message", Kind.STRING, max_len=1 << 30), _sig(), _ts())
    session_id: str
    tool_name: str
    message: str
    timestamp: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class CallAgentToolRes(Signed):
    FIELDS: ClassVar = (Field("message", "message", Kind.STRING, max_len=1 << 30), _sig(), _ts())
    message: str
    timestamp: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class GetAgentToolsReq(Signed):
    FIELDS: ClassVar = (Field("sessionid", "session_id", Kind.HASH), _sig(), _ts())
    session_id: str
    timestamp: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class GetAgentToolsRes(Signed):
    FIELDS: ClassVar = (Field("message", "message", Kind.STRING, max_len=1 << 30), _sig(), _ts())
    message: str
    timestamp: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class StreamStartReq(Signed):
    """``session.prompt.stream.start`` params (audio upload); signature not omitempty."""

    FIELDS: ClassVar = (Field("sessionid", "session_id", Kind.HASH),
                        Field("streamid", "stream_id", Kind.STRING, max_len=_TEXT),
                        Field("totalchunks", "total_chunks", Kind.UINT32),
                        Field("filesize", "file_size", Kind.UINT64),
                        Field("contenttype", "content_type", Kind.STRING, max_len=_TEXT),
                        _sig(omitempty=False), _ts())
    session_id: str
    stream_id: str
    total_chunks: int
    file_size: int
    content_type: str
    timestamp: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class StreamStartRes(Signed):
    FIELDS: ClassVar = (Field("streamid", "stream_id", Kind.STRING, max_len=_TEXT),
                        Field("status", "status", Kind.STRING, max_len=_TEXT),
                        _sig(omitempty=False), _ts())
    stream_id: str
    status: str
    timestamp: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class StreamChunkReq(Signed):
    FIELDS: ClassVar = (Field("sessionid", "session_id", Kind.HASH),
                        Field("streamid", "stream_id", Kind.STRING, max_len=_TEXT),
                        Field("chunkindex", "chunk_index", Kind.UINT32, required=False),
                        Field("chunkdata", "chunk_data", Kind.STRING, max_len=1 << 30),
                        Field("islastchunk", "is_last_chunk", Kind.BOOL, required=False),
                        _sig(), _ts())
    session_id: str
    stream_id: str
    chunk_index: int
    chunk_data: str
    is_last_chunk: bool
    timestamp: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class StreamChunkRes(Signed):
    FIELDS: ClassVar = (Field("streamid", "stream_id", Kind.STRING, max_len=_TEXT),
                        Field("chunkindex", "chunk_index", Kind.UINT32, required=False),
                        Field("status", "status", Kind.STRING, max_len=_TEXT), _sig(), _ts())
    stream_id: str
    chunk_index: int
    status: str
    timestamp: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class StreamEndReq(Signed):
    FIELDS: ClassVar = (Field("sessionid", "session_id", Kind.HASH),
                        Field("streamid", "stream_id", Kind.STRING, max_len=_TEXT),
                        Field("audiorequestparam", "audio_request_param", Kind.STRING,
                              max_len=1 << 20),
                        _sig(), _ts())
    session_id: str
    stream_id: str
    audio_request_param: str
    timestamp: int
    signature: bytes = b""


# -- errors ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RpcErrorData(GoStruct):
    """``RPCErrorData``: the signature lives here (no ``omitempty``)."""

    SIGNATURE: ClassVar = None
    FIELDS: ClassVar = (Field("timestamp", "timestamp", Kind.UINT64, required=False),
                        Field("signature", "signature", Kind.HEX, required=False, max_len=_SIG))
    timestamp: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class RpcErrorBody(Signed):
    """``RpcError``: ``{"message","code","data":{"timestamp","signature"}}``.

    Two kinds: *infrastructure* errors (bad request, unknown method, no capacity, ...)
    carry the plain-text reason and ``data.signature = 0x00``; *model* errors carry
    ECIES-hex of ``{"providerModelError": …}`` and a real signature over the struct
    with ``data.signature`` emptied (``"0x"``).
    """

    SIGNATURE: ClassVar = None
    FIELDS: ClassVar = (Field("message", "message", Kind.STRING, required=False, max_len=1 << 24),
                        Field("code", "code", Kind.INT, required=False),
                        Field("data", "data", Kind.STRUCT, struct=RpcErrorData))
    message: str
    code: int = ERROR_CODE
    data: RpcErrorData = field(default_factory=lambda: RpcErrorData(now_ms(),
                                                                     UNSIGNED_ERROR_SIGNATURE))

    def get_signature(self) -> bytes:
        return self.data.signature

    def with_signature(self, signature: bytes) -> Self:
        return type(self)(self.message, self.code, RpcErrorData(self.data.timestamp, signature))

    @property
    def is_signed(self) -> bool:
        """False for the reference's infrastructure errors (signature empty or ``0x00``)."""
        return self.data.signature not in (b"", UNSIGNED_ERROR_SIGNATURE)


# -- envelopes --------------------------------------------------------------------------
P = TypeVar("P", bound=GoStruct)


@dataclass(frozen=True, slots=True)
class Request(Generic[P]):
    """``RPCMessage``: one request, the only object a connection carries upstream."""

    id: str
    method: str
    params: P

    def encode(self) -> bytes:
        return ('{"id":' + go_string(self.id) + ',"method":' + go_string(self.method)
                + ',"params":').encode() + self.params.go_json() + b"}"


@dataclass(frozen=True, slots=True)
class Response(Generic[P]):
    """``RpcResponse``: a result or an error; a stream is several of these, then EOF."""

    id: str
    result: P | None = None
    error: RpcErrorBody | None = None

    def encode(self) -> bytes:
        head = '{"id":' + go_string(self.id) + ',"result":'
        body = self.result.go_json() if self.result is not None else b"null"
        tail = b"}" if self.error is None else b',"error":' + self.error.go_json() + b"}"
        return head.encode() + body + tail

    def unwrap(self) -> P:
        """The result, or the error as ``RpcError`` (code from ``classify_error``)."""
        if self.error is not None:
            raise to_rpc_error(self.error)
        if self.result is None:
            raise bad("empty result and no error")
        return self.result


REQUEST_TYPES: dict[str, type[Signed]] = {
    PING: PingReq, SESSION_REQUEST: SessionReq, SESSION_PROMPT: SessionPromptReq,
    SESSION_REPORT: SessionReportReq, AGENT_CALL_TOOL: CallAgentToolReq,
    AGENT_GET_TOOLS: GetAgentToolsReq, STREAM_START: StreamStartReq,
    STREAM_CHUNK: StreamChunkReq, STREAM_END: StreamEndReq,
}
"""Every method the reference's controller dispatches, with its params struct."""
RESULT_TYPES: dict[str, type[Signed]] = {
    PING: PongRes, SESSION_REQUEST: SessionRes, SESSION_PROMPT: SessionPromptRes,
    SESSION_REPORT: SessionReportRes, AGENT_CALL_TOOL: CallAgentToolRes,
    AGENT_GET_TOOLS: GetAgentToolsRes, STREAM_START: StreamStartRes,
    STREAM_CHUNK: StreamChunkRes, STREAM_END: SessionPromptRes,
}
"""The result struct each method answers with (a stream end answers like a prompt)."""

_MAX_ID = 256


def parse_request(obj: Any) -> Request[Signed]:
    """Validate an untrusted request object; params typed by method.

    Raises ``UNKNOWN_METHOD`` with the reference's text for a method it would not
    dispatch, ``BAD_REQUEST`` for anything malformed. The id is checked first so a
    caller can still answer with it (see ``request_id_of``).
    """
    request_id = request_id_of(obj)
    if request_id is None:
        raise bad("request id must be a string")
    method = obj.get("method")
    if not isinstance(method, str) or len(method) > _MAX_ID:
        raise bad("method must be a string")
    params_type = REQUEST_TYPES.get(method)
    if params_type is None:
        raise RpcError(ErrorCode.UNKNOWN_METHOD, f"unknown method: unknown method: {method}")
    return Request(request_id, method, params_type.from_obj(obj.get("params")))


def request_id_of(obj: Any) -> str | None:
    """The string id of a (possibly invalid) request object, or None."""
    if isinstance(obj, dict):
        rid = obj.get("id")
        if rid is None and "id" not in obj:
            return ""  # Go: a missing id decodes as ""
        if isinstance(rid, str) and len(rid) <= _MAX_ID:
            return rid
    return None


def parse_response(obj: Any, result_type: type[P]) -> Response[P]:
    """Validate an untrusted response object (result typed by ``result_type``).

    Signatures are *not* checked here: the caller knows which key to expect.
    """
    if not isinstance(obj, dict):
        raise bad("response must be a JSON object")
    rid = obj.get("id", "")
    if not isinstance(rid, str) or len(rid) > _MAX_ID:
        raise bad("response id must be a string")
    error = obj.get("error")
    if error is not None:
        return Response(rid, None, RpcErrorBody.from_obj(error))
    result = obj.get("result")
    if result is None:
        raise bad("empty result and no error")
    return Response(rid, result_type.from_obj(result))


# -- errors as exceptions ----------------------------------------------------------------
_PHRASES: dict[ErrorCode, str] = {
    ErrorCode.BAD_REQUEST: "request validation failed",
    ErrorCode.BAD_SIGNATURE: "invalid signature",
    ErrorCode.UNKNOWN_METHOD: "unknown method",
    ErrorCode.SESSION_NOT_FOUND: "session not found",
    ErrorCode.SESSION_CLOSED: "Session is closed",
    ErrorCode.SESSION_EXPIRED: "session expired",
    ErrorCode.NO_CAPACITY: "no capacity",
    ErrorCode.BID_NOT_FOUND: "failed to get bid",
    ErrorCode.BACKEND_ERROR: "failed to prompt",
}
"""Our code → the reference's wording for the same failure (its consumers show it)."""
_ALIASES: tuple[tuple[str, ErrorCode], ...] = (
    ("unknown method", ErrorCode.UNKNOWN_METHOD),
    ("failed to unmarshal request", ErrorCode.BAD_REQUEST),
    ("request validation failed", ErrorCode.BAD_REQUEST),
    ("received invalid signature", ErrorCode.BAD_SIGNATURE),
    ("invalid signature", ErrorCode.BAD_SIGNATURE),
    ("failed to authenticate signature", ErrorCode.BAD_SIGNATURE),
    ("invalid pubkey", ErrorCode.BAD_REQUEST),
    ("provider at capacity", ErrorCode.NO_CAPACITY),
    ("no capacity", ErrorCode.NO_CAPACITY),
    ("session is closed", ErrorCode.SESSION_CLOSED),
    ("session expired", ErrorCode.SESSION_EXPIRED),
    ("session not found", ErrorCode.SESSION_NOT_FOUND),
    ("session cannot be loaded", ErrorCode.SESSION_NOT_FOUND),
    ("failed to get session", ErrorCode.SESSION_NOT_FOUND),
    ("user not found", ErrorCode.SESSION_NOT_FOUND),
    ("failed to get bid", ErrorCode.BID_NOT_FOUND),
    ("over spend limit", ErrorCode.INSUFFICIENT_FUNDS),
    ("request cancelled while waiting in queue", ErrorCode.SESSION_BUSY),
    ("failed to get adapter", ErrorCode.MODEL_NOT_SERVED),
    ("failed to prompt", ErrorCode.BACKEND_ERROR),
    ("failed to generate report", ErrorCode.INTERNAL),
)


def error_text(error: RpcError) -> str:
    """The plain-text ``message`` of an infrastructure error for ``error``.

    Known codes use the reference's phrase (so Go consumers read what their own
    providers say and ``classify_error`` maps it back); others read
    ``"<code in words>: <message>"``.
    """
    if error.code == ErrorCode.UNKNOWN_METHOD and error.message.startswith("unknown method"):
        return error.message
    code = error.code if isinstance(error.code, ErrorCode) else None
    phrase = _PHRASES.get(code) if code else None
    if phrase is None:
        phrase = str(error.code).lower().replace("_", " ")
    if error.message and error.message != str(error.code):
        return f"{phrase}: {error.message}"
    return phrase


def classify_error(message: str) -> ErrorCode:
    """Our code for the reference's error text (``INTERNAL`` when unrecognised).

    The reference wraps errors as ``"outer: inner"``, so the outermost phrase wins;
    a phrase inside the text counts only when none starts it.
    """
    low = message.lower()
    phrases = [*_ALIASES, *((p.lower(), c) for c, p in _PHRASES.items()),
               *((str(c).lower().replace("_", " "), c) for c in ErrorCode)]
    for phrase, code in phrases:
        if low.startswith(phrase):
            return code
    for phrase, code in phrases:
        if f": {phrase}" in low:
            return code
    return ErrorCode.INTERNAL


def to_rpc_error(body: RpcErrorBody) -> RpcError:
    """A received infrastructure error as ``RpcError`` (signed ones hold ciphertext:
    decrypt with ``prompt.decrypt_error`` instead)."""
    if body.is_signed:
        return RpcError(ErrorCode.BACKEND_ERROR, "provider model error (encrypted)",
                        {"lumerin_code": body.code})
    return RpcError(classify_error(body.message), body.message, {"lumerin_code": body.code})


def error_response(request_id: str, error: RpcError | str, *,
                   timestamp: int | None = None) -> Response[Any]:
    """The reference's unsigned infrastructure error (``data.signature`` ``0x00``)."""
    text = error if isinstance(error, str) else error_text(error)
    data = RpcErrorData(timestamp or now_ms(), UNSIGNED_ERROR_SIGNATURE)
    return Response(request_id, None, RpcErrorBody(text, ERROR_CODE, data))


def user_key_matches(req: SessionReq) -> bool:
    """Does ``req.key`` belong to ``req.user``? The reference never checks; we do."""
    try:
        return public_key_to_address(normalize_public_key(req.key)) == req.user
    except RpcError:
        return False
