"""Errors of the consumer's HTTP API, in OpenAI's shape with stable codes.

``{"error": {"message", "type", "param", "code"}}`` with the status codes an
OpenAI client expects (400 bad request, 401 auth, 404 unknown model, 402 for
insufficient MOR, 429 no capacity, 502/503/504 upstream trouble).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

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
    ErrorCode.BACKEND_UNAVAILABLE: (503, "api_error"),
    ErrorCode.BACKEND_ERROR: (502, "api_error"),
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *,
                 type_: str = "invalid_request_error", param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type_
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status)

    def sse(self) -> bytes:
        """The same error as one SSE frame, for failures after a stream has started."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"

    @classmethod
    def from_rpc(cls, exc: RpcError) -> ApiError:
        status, type_ = RPC_STATUS.get(exc.code, (502, "api_error"))
        return cls(status, str(exc.code).lower(), exc.message, type_=type_)


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message, param=param)
