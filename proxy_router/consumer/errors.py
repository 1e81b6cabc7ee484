"""Errors of the consumer's HTTP API, in OpenAI's shape with stable codes.

``{"error": {"message", "type", "param", "code"}}`` (``ErrorResponse``) with the
status codes an OpenAI client expects (400 bad request, 401 auth, 403 refused
origin, 404 unknown model, 402 for insufficient MOR, 429 no capacity,
502/503/504 upstream trouble).

``HTTP_ERRORS`` is the one table from a failure (a domain error of
``domain_errors.py``, a MOR-RPC ``ErrorCode``, a chain or transport error) to what
the client sees; the API's error middleware applies it, so the rest of the
consumer raises what went wrong and never an HTTP status. A provider's
``BACKEND_ERROR`` whose data names an OpenAI code (its model server refused the
request, or is busy) is answered by that code's row of ``BACKEND_REFUSALS`` instead,
so a prompt over the context is a 400 ``context_length_exceeded`` (which SDKs do not
retry) rather than a 502. Every "busy, come back" answer (429, and a backend's 503)
carries ``Retry-After``: the provider's estimate when it sent one.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from proxy_router.chain.errors import ChainError, ChainUnavailable, ContractReverted
from proxy_router.consumer import domain_errors as d
from proxy_router.morrpc.errors import ErrorCode, RpcError, RpcUnavailable
from proxy_router.redact import redact_text

INVALID, API, RATE = "invalid_request_error", "api_error", "rate_limit_error"
MAX_RETRY_AFTER_S = 60
"""Longest Retry-After passed on from a provider (the openai SDK ignores longer ones)."""
_PARAM = re.compile(r"[\w.\[\]-]{1,64}")


class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong, for a human")
    type: str = Field(description="OpenAI error type, e.g. invalid_request_error, api_error")
    param: str | None = Field(description="the request field at fault, if any")
    code: str | None = Field(description="stable machine-readable code, e.g. model_not_found")


class ErrorResponse(BaseModel):
    """Every error of the consumer API (and an SSE ``data:`` frame ending a broken stream)."""

    error: ErrorDetail


class ApiError(Exception):
    """An error as the client receives it; raised directly only for HTTP-level faults
    (a malformed body, path or credential), everything else comes from the table."""

    def __init__(self, status: int, code: str, message: str, *,
                 type_: str = INVALID, param: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type_
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=ErrorDetail(message=self.message, type=self.type,
                                               param=self.param, code=self.code)).model_dump()

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)

    def sse(self) -> bytes:
        """The same error as one SSE frame, for failures after a stream has started."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message, param=param)


def _text(exc: Exception) -> str:
    return exc.message if isinstance(exc, RpcError) else str(exc)


@dataclass(frozen=True, slots=True)
class HttpError:
    """How one kind of failure is answered. ``message`` turns the exception into the
    client's text (its own by default); ``log`` names a warning to log first."""

    status: int
    code: str
    type: str = INVALID
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    message: Callable[[Any], str] = _text
    log: str | None = None
    retry_after: int | None = None
    """Send ``Retry-After``: the provider's ``retryAfter`` (seconds) if it gave one, else
    this."""

    def api_error(self, exc: Exception) -> ApiError:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(_data_int(exc, "retryAfter", 1, MAX_RETRY_AFTER_S)
                                         or self.retry_after)
        return ApiError(self.status, self.code, self.message(exc), type_=self.type,
                        param=self.param or _data_param(exc), headers=headers)


_PARAM = re.compile(r"[A-Za-z0-9_.\[\]-]{1,128}")


def _data_param(exc: Exception) -> str | None:
    """The field a provider's refusal names (its ``param``: a peer's, so checked to be a
    short field path), or None."""
    data = exc.data if isinstance(exc, RpcError) else None
    value = data.get("param") if isinstance(data, dict) else None
    return value if isinstance(value, str) and _PARAM.fullmatch(value) else None


def _data_int(exc: Exception, key: str, low: int, high: int) -> int | None:
    """An integer ``low..high`` from an ``RpcError``'s data (a peer's: checked), or None."""
    data = exc.data if isinstance(exc, RpcError) else None
    value = data.get(key) if isinstance(data, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


HTTP_ERRORS: dict[type[Exception] | ErrorCode, HttpError] = {
    # The consumer's own failures (domain_errors.py).
    d.ModelNotFound: HttpError(404, "model_not_found", param="model"),
    d.BidNotFound: HttpError(404, "bid_not_found", param="bid"),
    d.SessionNotFound: HttpError(404, "session_not_found"),
    d.NoOpenSession: HttpError(404, "session_not_found", param="session_id"),
    d.SessionModelMismatch: HttpError(400, "session_model_mismatch", param="model"),
    d.WrongModelKind: HttpError(400, "model_not_supported", param="model"),
    d.RequestTooLarge: HttpError(413, "request_too_large", param="messages"),
    d.NotSessionUser: HttpError(403, "not_session_user"),
    d.SessionClosed: HttpError(409, "session_closed"),
    d.BidNotActive: HttpError(409, "bid_not_active"),
    d.InsufficientMor: HttpError(402, "insufficient_mor", "insufficient_funds"),
    d.OpenSessionReverted: HttpError(409, "open_session_reverted"),
    d.NoBids: HttpError(503, "no_bids", API),
    d.NoProviderAvailable: HttpError(503, "no_provider_available", API),
    d.ProviderUnavailable: HttpError(503, "provider_unavailable", API),
    d.SessionBusy: HttpError(429, "session_busy", RATE, retry_after=1),
    d.BadProviderResponse: HttpError(502, "bad_provider_response", API),
    # MOR-RPC errors from a provider (or raised here about its answer): the code,
    # lower-cased, is the client's code.
    ErrorCode.BAD_REQUEST: HttpError(400, "bad_request"),
    ErrorCode.BAD_SIGNATURE: HttpError(502, "bad_signature", API),
    ErrorCode.STALE_MESSAGE: HttpError(502, "stale_message", API),
    ErrorCode.REPLAYED_MESSAGE: HttpError(502, "replayed_message", API),
    ErrorCode.RATE_LIMITED: HttpError(429, "rate_limited", RATE, retry_after=1),
    ErrorCode.UNKNOWN_METHOD: HttpError(502, "unknown_method", API),
    ErrorCode.SESSION_NOT_FOUND: HttpError(404, "session_not_found"),
    ErrorCode.SESSION_CLOSED: HttpError(409, "session_closed"),
    ErrorCode.SESSION_EXPIRED: HttpError(409, "session_expired"),
    ErrorCode.NOT_SESSION_USER: HttpError(403, "not_session_user", "permission_error"),
    ErrorCode.WRONG_PROVIDER: HttpError(409, "wrong_provider"),
    ErrorCode.MODEL_NOT_SERVED: HttpError(404, "model_not_served"),
    ErrorCode.NO_CAPACITY: HttpError(429, "no_capacity", RATE, retry_after=1),
    ErrorCode.SESSION_BUSY: HttpError(429, "session_busy", RATE, retry_after=1),
    ErrorCode.INSUFFICIENT_FUNDS: HttpError(402, "insufficient_funds", "insufficient_funds"),
    ErrorCode.TOO_MANY_APPROVALS: HttpError(429, "too_many_approvals", RATE, retry_after=1),
    ErrorCode.PAYLOAD_TOO_LARGE: HttpError(413, "payload_too_large"),
    ErrorCode.BID_NOT_FOUND: HttpError(502, "bid_not_found", API),
    ErrorCode.BACKEND_UNAVAILABLE: HttpError(503, "backend_unavailable", API),
    ErrorCode.BACKEND_ERROR: HttpError(502, "backend_error", API),
    ErrorCode.CHAIN_UNAVAILABLE: HttpError(503, "chain_unavailable", API),
    ErrorCode.DECRYPTION_FAILED: HttpError(502, "decryption_failed", API),
    ErrorCode.STREAM_INTEGRITY: HttpError(502, "stream_integrity", API),
    ErrorCode.FLOW_CONTROL: HttpError(502, "flow_control", API),
    ErrorCode.INTERNAL: HttpError(502, "internal", API),
    # The provider or the chain out of reach; their text may quote a URL and its API
    # key, so it is redacted or replaced.
    RpcUnavailable: HttpError(503, "provider_unavailable", API,
                              message=lambda exc: redact_text(str(exc))),
    ChainUnavailable: HttpError(503, "chain_unavailable", API, log="chain_unavailable",
                                message=lambda _: "the chain RPC is unreachable; retry later"),
    ContractReverted: HttpError(409, "transaction_reverted",
                                message=lambda exc: f"the contract refused: {exc.reason}"),
    ChainError: HttpError(502, "chain_error", API, log="chain_error",
                          message=lambda _: "the chain RPC answered with an error"),
}


BACKEND_REFUSALS: dict[str, HttpError] = {
    # A provider's BACKEND_ERROR by its data's ``code``: what its model server said of the
    # request, as OpenAI says it. The status of an invalid request is the data's 4xx.
    "context_length_exceeded": HttpError(400, "context_length_exceeded", param="messages"),
    "invalid_request_error": HttpError(400, "invalid_request_error"),
    "rate_limit_exceeded": HttpError(429, "rate_limit_exceeded", RATE, retry_after=1),
    "backend_overloaded": HttpError(503, "backend_overloaded", API, retry_after=1),
}


def _backend_refusal(exc: RpcError) -> HttpError | None:
    """``BACKEND_REFUSALS``' row for a provider's ``BACKEND_ERROR``, None if its data
    names no known code (an older provider, or the backend's own failure: a 502)."""
    data = exc.data if isinstance(exc.data, dict) else {}
    code = data.get("code")
    rule = BACKEND_REFUSALS.get(code) if isinstance(code, str) else None
    if rule is None:
        return None
    param = data.get("param")
    param = param if isinstance(param, str) and _PARAM.fullmatch(param) else rule.param
    status = _data_int(exc, "status", 400, 499) if rule.code == INVALID else None
    if status == 429:
        status = None
    return dataclasses.replace(rule, status=status or rule.status, param=param)


def internal_error() -> ApiError:
    return ApiError(500, "internal_error", "internal error", type_=API)


def rule_for(exc: Exception) -> HttpError | None:
    """The table's row for ``exc`` (its most specific class's; an ``RpcError`` by its
    code, a newer peer's unknown code as a 502), ``None`` for an unexpected error."""
    if isinstance(exc, RpcError):
        if exc.code == ErrorCode.BACKEND_ERROR and exc.data:
            refused = _backend_refusal(exc)
            if refused is not None:
                return refused
        if isinstance(exc.code, ErrorCode):
            return HTTP_ERRORS[exc.code]
        return HttpError(502, str(exc.code).lower(), API)
    for cls in type(exc).__mro__:
        rule = HTTP_ERRORS.get(cls)
        if rule is not None:
            return rule
    return None


def to_api_error(exc: Exception) -> ApiError:
    """``exc`` as the client sees it: from the table, else a 500."""
    if isinstance(exc, ApiError):
        return exc
    rule = rule_for(exc)
    return internal_error() if rule is None else rule.api_error(exc)
