"""MOR-RPC failures: stable wire codes and the exceptions callers catch.

Codes are part of the protocol (consumers branch on them, e.g. try the next
provider on ``NO_CAPACITY``), so they are string constants that never change
meaning; messages are for humans and may change. ``RpcUnavailable`` is kept
apart from ``RpcError`` because it says nothing about the request itself: the
link is gone, and the caller may retry elsewhere.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Stable error codes carried in ``{"error": {"code", "message", "data"?}}``."""

    BAD_REQUEST = "BAD_REQUEST"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    STALE_MESSAGE = "STALE_MESSAGE"
    REPLAYED_MESSAGE = "REPLAYED_MESSAGE"
    RATE_LIMITED = "RATE_LIMITED"
    UNKNOWN_METHOD = "UNKNOWN_METHOD"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    SESSION_CLOSED = "SESSION_CLOSED"
    SESSION_EXPIRED = "SESSION_EXPIRED"
    NOT_SESSION_USER = "NOT_SESSION_USER"
    WRONG_PROVIDER = "WRONG_PROVIDER"
    MODEL_NOT_SERVED = "MODEL_NOT_SERVED"
    NO_CAPACITY = "NO_CAPACITY"
    SESSION_BUSY = "SESSION_BUSY"
    """The session already runs as many prompts as one session may: wait for it."""
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    """The requester lacks the MOR for the bid's shortest session, or ETH for its gas."""
    TOO_MANY_APPROVALS = "TOO_MANY_APPROVALS"
    """The requester holds the most unused approvals allowed: open one first."""
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    BID_NOT_FOUND = "BID_NOT_FOUND"
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
    BACKEND_ERROR = "BACKEND_ERROR"
    CHAIN_UNAVAILABLE = "CHAIN_UNAVAILABLE"
    """The router cannot reach its chain RPC right now (retryable, says nothing of you)."""
    DECRYPTION_FAILED = "DECRYPTION_FAILED"
    STREAM_INTEGRITY = "STREAM_INTEGRITY"
    FLOW_CONTROL = "FLOW_CONTROL"
    INTERNAL = "INTERNAL"


class RpcError(Exception):
    """A request failed with a protocol error code (raised locally or received)."""

    def __init__(self, code: ErrorCode | str, message: str = "",
                 data: dict[str, Any] | None = None) -> None:
        self.code: ErrorCode | str = _known(code)
        self.message = message or str(self.code)
        self.data = data
        super().__init__(f"{self.code}: {self.message}")

    def to_dict(self) -> dict[str, Any]:
        """The wire form ``{code, message[, data]}``."""
        out: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out

    @classmethod
    def from_dict(cls, error: Any) -> RpcError:
        """Rebuild from a received error object; malformed ones become BAD_REQUEST."""
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            return cls(ErrorCode.BAD_REQUEST, "malformed error object from peer")
        data = error.get("data")
        return cls(error["code"], str(error.get("message", "")),
                   data if isinstance(data, dict) else None)


class RpcUnavailable(ConnectionError):
    """The peer cannot be reached, or the link dropped before the reply ended."""


class RpcTimeout(RpcUnavailable, TimeoutError):
    """The peer did not answer within the configured time."""


def _known(code: ErrorCode | str) -> ErrorCode | str:
    """Map to the enum when known; keep a newer peer's unknown code verbatim."""
    try:
        return ErrorCode(code)
    except ValueError:
        return code
