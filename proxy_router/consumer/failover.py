"""Whose fault a failed prompt is, and so what the consumer does about it.

The one place that decides, for a failure talking to a provider, whether to drop
the provider's session and try another (its fault), to open a new session (this
one is over), or to report it to the client (the request's fault, or "busy": the
session stays good). ``ChatService`` asks before the first token, when it can
still retry; the API asks after it, when it can only stop using the provider.
"""

from __future__ import annotations

from enum import Enum

from proxy_router.morrpc import ErrorCode, RpcError, RpcUnavailable


class Verdict(Enum):
    FAIL_OVER = "fail_over"
    """The provider is broken: drop its session (settled as a dispute), try the next."""
    REOPEN = "reopen"
    """The session is over: open a new one, with the same providers to choose from."""
    SURFACE = "surface"
    """Nothing a retry elsewhere would fix: the client gets the error."""


# NO_CAPACITY and SESSION_BUSY are not here: a 429 for the client, the session stays good
# (the provider has queued the prompt as long as it may). Nor is BACKEND_ERROR: the model
# server answered, refusing the request (a 4xx such as context_length_exceeded: another
# provider's would too) or asking to come back later (429/503 with Retry-After).
PROVIDER_FAULT_CODES = frozenset({ErrorCode.BACKEND_UNAVAILABLE, ErrorCode.INTERNAL})
SESSION_OVER_CODES = frozenset({ErrorCode.SESSION_EXPIRED, ErrorCode.SESSION_CLOSED})


def verdict(exc: BaseException) -> Verdict:
    """What to do after ``exc`` from a provider: unreachable or silent (``RpcUnavailable``,
    a first-token ``TimeoutError``) is its fault; an ``RpcError`` depends on its code."""
    if isinstance(exc, RpcError):
        if exc.code in PROVIDER_FAULT_CODES:
            return Verdict.FAIL_OVER
        if exc.code in SESSION_OVER_CODES:
            return Verdict.REOPEN
        return Verdict.SURFACE
    if isinstance(exc, RpcUnavailable | TimeoutError):
        return Verdict.FAIL_OVER
    return Verdict.SURFACE
