"""What a client sees for each failure: ``errors.HTTP_ERRORS``, applied by the API's
error middleware. Every domain error and every MOR-RPC code has a row, so a new one
cannot silently become a 500; the rows pin the statuses and codes clients rely on."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy_router.chain.errors import (
    ChainError,
    ChainUnavailable,
    ContractReverted,
    TransactionFailed,
)
from proxy_router.consumer import domain_errors as d
from proxy_router.consumer.api import error_middleware
from proxy_router.consumer.errors import HTTP_ERRORS, rule_for, to_api_error
from proxy_router.morrpc import ErrorCode, RpcError, RpcTimeout, RpcUnavailable


def domain_error_classes() -> list[type[d.ConsumerError]]:
    found, todo = [], [d.ConsumerError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def test_every_domain_error_has_its_own_row():
    classes = domain_error_classes()
    assert len(classes) >= 16
    missing = [c.__name__ for c in classes if c not in HTTP_ERRORS]
    assert missing == []


def test_every_mor_rpc_code_has_a_row_whose_client_code_is_the_code_lower_cased():
    assert [c for c in ErrorCode if c not in HTTP_ERRORS] == []
    for code in ErrorCode:
        assert HTTP_ERRORS[code].code == code.value.lower()


# (the error, status, OpenAI type, code, param, headers) as clients see them.
SEEN: list[tuple[Exception, int, str, str, str | None, dict[str, str]]] = [
    (d.ModelNotFound("x"), 404, "invalid_request_error", "model_not_found", "model", {}),
    (d.BidNotFound("x"), 404, "invalid_request_error", "bid_not_found", "bid", {}),
    (d.SessionNotFound("x"), 404, "invalid_request_error", "session_not_found", None, {}),
    (d.NoOpenSession("x"), 404, "invalid_request_error", "session_not_found", "session_id",
     {}),
    (d.SessionModelMismatch("x"), 400, "invalid_request_error", "session_model_mismatch",
     "model", {}),
    (d.RequestTooLarge("x"), 413, "invalid_request_error", "request_too_large", "messages",
     {}),
    (d.NotSessionUser("x"), 403, "invalid_request_error", "not_session_user", None, {}),
    (d.SessionClosed("x"), 409, "invalid_request_error", "session_closed", None, {}),
    (d.BidNotActive("x"), 409, "invalid_request_error", "bid_not_active", None, {}),
    (d.InsufficientMor("x"), 402, "insufficient_funds", "insufficient_mor", None, {}),
    (d.OpenSessionReverted("x"), 409, "invalid_request_error", "open_session_reverted", None,
     {}),
    (d.NoBids("x"), 503, "api_error", "no_bids", None, {}),
    (d.NoProviderAvailable("x"), 503, "api_error", "no_provider_available", None, {}),
    (d.ProviderUnavailable("x"), 503, "api_error", "provider_unavailable", None, {}),
    (d.SessionBusy("x"), 429, "rate_limit_error", "session_busy", None, {"Retry-After": "1"}),
    (d.BadProviderResponse("x"), 502, "api_error", "bad_provider_response", None, {}),
    (RpcError(ErrorCode.BAD_REQUEST, "x"), 400, "invalid_request_error", "bad_request", None,
     {}),
    (RpcError(ErrorCode.NOT_SESSION_USER, "x"), 403, "permission_error", "not_session_user",
     None, {}),
    (RpcError(ErrorCode.NO_CAPACITY, "x"), 429, "rate_limit_error", "no_capacity", None,
     {"Retry-After": "1"}),
    (RpcError(ErrorCode.NO_CAPACITY, "x", {"retryAfter": 7}), 429, "rate_limit_error",
     "no_capacity", None, {"Retry-After": "7"}),
    (RpcError(ErrorCode.SESSION_BUSY, "x"), 429, "rate_limit_error", "session_busy", None,
     {"Retry-After": "1"}),
    (RpcError(ErrorCode.RATE_LIMITED, "x"), 429, "rate_limit_error", "rate_limited", None,
     {"Retry-After": "1"}),
    (RpcError(ErrorCode.INSUFFICIENT_FUNDS, "x"), 402, "insufficient_funds",
     "insufficient_funds", None, {}),
    (RpcError(ErrorCode.PAYLOAD_TOO_LARGE, "x"), 413, "invalid_request_error",
     "payload_too_large", None, {}),
    (RpcError(ErrorCode.SESSION_EXPIRED, "x"), 409, "invalid_request_error", "session_expired",
     None, {}),
    (RpcError(ErrorCode.BACKEND_UNAVAILABLE, "x"), 503, "api_error", "backend_unavailable",
     None, {}),
    (RpcError(ErrorCode.BACKEND_ERROR, "x"), 502, "api_error", "backend_error", None, {}),
    # what the provider's model server said of the request (BACKEND_ERROR's data)
    (RpcError(ErrorCode.BACKEND_ERROR, "x", {"status": 500}), 502, "api_error",
     "backend_error", None, {}),
    (RpcError(ErrorCode.BACKEND_ERROR, "x", {"status": 400, "code": "context_length_exceeded",
                                             "param": "messages"}),
     400, "invalid_request_error", "context_length_exceeded", "messages", {}),
    (RpcError(ErrorCode.BACKEND_ERROR, "x", {"status": 422, "code": "invalid_request_error",
                                             "param": "temperature"}),
     422, "invalid_request_error", "invalid_request_error", "temperature", {}),
    (RpcError(ErrorCode.BACKEND_ERROR, "x", {"status": 503, "code": "invalid_request_error",
                                             "param": "a b/c"}),
     400, "invalid_request_error", "invalid_request_error", None, {}),
    (RpcError(ErrorCode.BACKEND_ERROR, "x", {"status": 429, "code": "rate_limit_exceeded",
                                             "retryAfter": 5}),
     429, "rate_limit_error", "rate_limit_exceeded", None, {"Retry-After": "5"}),
    (RpcError(ErrorCode.BACKEND_ERROR, "x", {"status": 503, "code": "backend_overloaded",
                                             "retryAfter": 3600}),
     503, "api_error", "backend_overloaded", None, {"Retry-After": "1"}),
    (RpcError(ErrorCode.BACKEND_ERROR, "x", {"status": 400, "code": "made_up"}), 502,
     "api_error", "backend_error", None, {}),
    (RpcError(ErrorCode.STREAM_INTEGRITY, "x"), 502, "api_error", "stream_integrity", None,
     {}),
    (RpcError("NEWER_PEER_CODE", "x"), 502, "api_error", "newer_peer_code", None, {}),
    (RpcUnavailable("x"), 503, "api_error", "provider_unavailable", None, {}),
    (RpcTimeout("x"), 503, "api_error", "provider_unavailable", None, {}),
    (ChainUnavailable("x"), 503, "api_error", "chain_unavailable", None, {}),
    (ContractReverted("StakeTooLow"), 409, "invalid_request_error", "transaction_reverted",
     None, {}),
    (TransactionFailed("x"), 502, "api_error", "chain_error", None, {}),
    (ChainError("x"), 502, "api_error", "chain_error", None, {}),
]


@pytest.mark.parametrize(("exc", "status", "type_", "code", "param", "headers"), SEEN,
                         ids=[f"{type(s[0]).__name__}-{s[3]}" for s in SEEN])
def test_what_the_client_sees(exc: Exception, status: int, type_: str, code: str,
                              param: str | None, headers: dict[str, str]):
    err = to_api_error(exc)
    assert (err.status, err.type, err.code, err.param, err.headers) == (
        status, type_, code, param, headers)


@pytest.mark.parametrize(("exc", "message"), [
    (d.NoBids("no active bid for model m"), "no active bid for model m"),
    (RpcError(ErrorCode.NO_CAPACITY, "all slots busy"), "all slots busy"),
    (RpcUnavailable("cannot reach wss://rpc.example/v2/abcdef0123456789abcdef0123456789"),
     "cannot reach wss://rpc.example/v2/***"),
    (ChainUnavailable("https://x.alchemy.com/v2/KEY refused"),
     "the chain RPC is unreachable; retry later"),
    (ContractReverted("StakeTooLow", {"required": 2}),
     "the contract refused: StakeTooLow(required=2)"),
    (ChainError("boom at https://x/?apikey=1"), "the chain RPC answered with an error"),
])
def test_the_message_is_the_error_s_own_unless_it_may_carry_a_secret(exc: Exception,
                                                                    message: str):
    assert to_api_error(exc).message == message


def test_an_unexpected_error_has_no_row_and_is_a_plain_500():
    assert rule_for(KeyError("x")) is None
    assert rule_for(d.ConsumerError("a new error without a row")) is None
    err = to_api_error(KeyError("secret detail"))
    assert (err.status, err.code, err.message) == (500, "internal_error", "internal error")


@pytest.mark.parametrize(("exc", "status", "code"), [
    (d.SessionBusy("still answering"), 429, "session_busy"),
    (ChainUnavailable("down"), 503, "chain_unavailable"),
    (RpcError(ErrorCode.MODEL_NOT_SERVED, "no such model here"), 404, "model_not_served"),
    (ValueError("a bug"), 500, "internal_error"),
])
async def test_the_middleware_answers_with_the_table_s_error(exc: Exception, status: int,
                                                            code: str):
    async def handler(request: web.Request) -> web.Response:
        raise exc

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/")
        body: dict[str, Any] = await resp.json()
    assert resp.status == status
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if isinstance(exc, d.SessionBusy):
        assert resp.headers["Retry-After"] == "1"
