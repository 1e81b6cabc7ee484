"""Errors of the consumer's HTTP API, in OpenAI's shape with stable codes.

``{"error": {"message", "type", "param", "code"}}`` (``ErrorResponse``) with the
status codes an OpenAI client expects (400 bad request, 401 auth, 403 refused
origin, 404 unknown model, 402 for insufficient MOR, 429 no capacity,
502/503/504 upstream trouble).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from proxy_router.rpc.errors import ErrorCode, RpcError

# MOR-RPC error code → (HTTP status, OpenAI error type)
RPC_STATUS: dict[str, tuple[int, str]] = {
    ErrorCode.BAD_REQUEST: (400, "invalid_request_error"),
    ErrorCode.SESSION_NOT_FOUND: (404, "invalid_request_error"),
    ErrorCode.SESSION_CLOSED: (409, "invalid_request_error"),
    ErrorCode.SESSION_EXPIRED: (409, "invalid_request_error"),
    ErrorCode.NOT_SESSION_USER: (403, "permission_error"),
    ErrorCode.WRONG_PROVIDER: (409, "invalid_request_error"),
    ErrorCode.MODEL_NOT_SERVED: (404, "invalid_request_error"),
    ErrorCode.NO_CAPACITY: (429, "rate_limit_error"),
    ErrorCode.SESSION_BUSY: (429, "rate_limit_error"),
    ErrorCode.RATE_LIMITED: (429, "rate_limit_error"),
    ErrorCode.TOO_MANY_APPROVALS: (429, "rate_limit_error"),
    ErrorCode.INSUFFICIENT_FUNDS: (402, "insufficient_funds"),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, "invalid_request_error"),
    ErrorCode.CHAIN_UNAVAILABLE: (503, "api_error"),
    ErrorCode.BACKEND_UNAVAILABLE: (503, "api_error"),
    ErrorCode.BACKEND_ERROR: (502, "api_error"),
}


class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong, for a human")
    type: str = Field(description="OpenAI error type, e.g. invalid_request_error, api_error")
    param: str | None = Field(description="the request field at fault, if any")
    code: str | None = Field(description="stable machine-readable code, e.g. model_not_found")


class ErrorResponse(BaseModel):
    """Every error of the consumer API (and an SSE ``data:`` frame ending a broken stream)."""

    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *,
                 type_: str = "invalid_request_error", param: str | None = None,
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

    @classmethod
    def from_rpc(cls, exc: RpcError) -> ApiError:
        status, type_ = RPC_STATUS.get(exc.code, (502, "api_error"))
        return cls(status, str(exc.code).lower(), exc.message, type_=type_)


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message, param=param)
