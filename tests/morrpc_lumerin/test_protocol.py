"""Per-method builders and checks: what each side accepts, and what it must refuse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from proxy_router.morrpc.errors import ErrorCode, RpcError, RpcUnavailable
from proxy_router.morrpc.lumerin import (
    DONE_PLAINTEXT,
    REQUEST_TYPES,
    Approval,
    PongRes,
    Response,
    SessionPromptRes,
    SessionRes,
    check_fresh,
    check_pong,
    check_report_response,
    check_session_request,
    check_session_response,
    classify_error,
    ecies_encrypt_hex,
    error_response,
    error_text,
    model_error_response,
    parse_request,
    parse_response,
    ping_request,
    pong_response,
    prompt_chunk_response,
    prompt_chunks,
    prompt_done_response,
    prompt_request,
    report_request,
    report_response,
    session_request,
    session_response,
    sign_blob,
)
from proxy_router.morrpc.signing import Signer

PROVIDER = Signer.from_key("0x" + "a1" * 32)
USER = Signer.from_key("0x" + "b2" * 32)
STRANGER = Signer.from_key("0x" + "c3" * 32)
BID = "0x" + "42" * 32
SESSION = "0x" + "5e" * 32
CHAIN = 31337


def wire(obj: Any) -> Any:
    """Through the wire and back: encode, then parse untrusted bytes."""
    return orjson.loads(obj.encode())


def opened_request() -> Any:
    return parse_request(wire(session_request(USER, bid_id=BID, spend=10**18)))


def test_the_reference_dispatches_nine_methods() -> None:
    assert sorted(REQUEST_TYPES) == sorted([
        "network.ping", "session.request", "session.prompt", "session.report",
        "agent.call_tool", "agent.get_tools", "session.prompt.stream.start",
        "session.prompt.stream.chunk", "session.prompt.stream.end"])


# -- ping -----------------------------------------------------------------------------------
def test_ping_round_trip_and_its_checks() -> None:
    ping = ping_request(USER)
    assert len(ping.params.nonce) == 8 and ping.id == "0"
    served = parse_request(wire(ping))
    assert served.params.recover_address() == USER.address
    pong = parse_response(wire(pong_response(served, PROVIDER, "1.2.3")), PongRes)
    assert check_pong(pong, provider=PROVIDER.address, nonce=ping.params.nonce).version == "1.2.3"
    with pytest.raises(RpcError):
        check_pong(pong, provider=STRANGER.address, nonce=ping.params.nonce)
    with pytest.raises(RpcError):
        check_pong(pong, provider=PROVIDER.address, nonce=b"\x00" * 8)


# -- session.request --------------------------------------------------------------------------
def test_session_request_round_trip() -> None:
    req = opened_request()
    assert check_session_request(req.params) == USER.public_key
    res = parse_response(wire(session_response(req, PROVIDER, chain_id=CHAIN)), SessionRes)
    opened = check_session_response(res, provider=PROVIDER.address, user=USER.address,
                                    bid_id=BID, chain_id=CHAIN)
    assert opened.provider_public_key == PROVIDER.public_key
    assert opened.decoded.bid_id == BID and opened.decoded.user == USER.address
    assert opened.decoded.timestamp_ms == opened.result.timestamp  # the approval uses ms


def test_session_request_whose_key_is_not_the_users_is_refused_by_default() -> None:
    params = session_request(USER, bid_id=BID, spend=1).params
    forged = type(params)(user=STRANGER.address, key=USER.public_key, spend=1,
                          timestamp=params.timestamp, bid_id=BID).signed(USER)
    with pytest.raises(RpcError) as err:
        check_session_request(forged)
    assert err.value.code == ErrorCode.BAD_SIGNATURE
    assert check_session_request(forged, require_key_of_user=False) == USER.public_key


def test_session_request_signed_by_another_key_is_refused() -> None:
    params = session_request(USER, bid_id=BID, spend=1).params
    with pytest.raises(RpcError):
        check_session_request(params.with_signature(params.signed(STRANGER).signature))


@pytest.mark.parametrize("tamper", ["provider", "approval_signer", "bid", "chain", "user",
                                    "result"])
def test_a_session_response_is_checked_end_to_end(tamper: str) -> None:
    req = opened_request()
    resp = session_response(req, PROVIDER, chain_id=CHAIN)
    res = resp.result
    assert res is not None
    kwargs: dict[str, Any] = {"provider": PROVIDER.address, "user": USER.address, "bid_id": BID,
                              "chain_id": CHAIN}
    if tamper == "provider":  # a stranger answers with its own key and approval
        resp = session_response(req, STRANGER, chain_id=CHAIN)
    elif tamper == "approval_signer":
        res = type(res)(res.pub_key, res.approval, sign_blob(STRANGER, res.approval), res.user,
                        res.timestamp).signed(PROVIDER)
        resp = Response(resp.id, res)
    elif tamper == "bid":
        kwargs["bid_id"] = "0x" + "43" * 32
    elif tamper == "chain":
        kwargs["chain_id"] = 1
    elif tamper == "user":
        kwargs["user"] = STRANGER.address
    else:  # result edited after signing
        approval = Approval(BID, CHAIN, USER.address, 1).encode()
        resp = Response(resp.id, type(res)(res.pub_key, approval, res.approval_sig, res.user,
                                           res.timestamp, res.signature))
    with pytest.raises(RpcError):
        check_session_response(parse_response(wire(resp), SessionRes), **kwargs)


# -- session.prompt ---------------------------------------------------------------------------
async def stream(*responses: Response[Any]) -> AsyncIterator[Response[SessionPromptRes]]:
    for r in responses:
        yield parse_response(wire(r), SessionPromptRes)


def chunk(text: bytes, signer: Signer = PROVIDER, to: Signer = USER) -> Response[Any]:
    return prompt_chunk_response("r1", signer, user_public_key=to.public_key, plaintext=text)


async def collect(*responses: Response[Any]) -> list[bytes]:
    return [c async for c in prompt_chunks(stream(*responses), user_key=USER,
                                           provider_public_key=PROVIDER.public_key)]


async def test_prompt_request_carries_the_body_in_the_clear() -> None:
    body = '{"model":"m","messages":[{"role":"user","content":"<hi> & bye"}],"stream":true}'
    req = parse_request(wire(prompt_request(USER, session_id=SESSION, body=body)))
    assert req.params.message == body
    req.params.verify(USER.public_key)


async def test_prompt_chunks_stop_at_done() -> None:
    done = prompt_done_response("r1", PROVIDER, user_public_key=USER.public_key)
    got = await collect(chunk(b'{"a":1}'), chunk(b'{"a":2}'), done, chunk(b'{"after":1}'))
    assert got == [b'{"a":1}', b'{"a":2}']
    assert DONE_PLAINTEXT == b'"[DONE]"'


async def test_prompt_chunks_end_at_eof_without_done() -> None:
    assert await collect(chunk(b'{"object":"chat.completion"}')) == \
        [b'{"object":"chat.completion"}']


async def test_a_stream_with_no_chunk_is_a_failure() -> None:
    with pytest.raises(RpcUnavailable):
        await collect()


async def test_a_forged_or_foreign_chunk_is_refused() -> None:
    with pytest.raises(RpcError) as err:
        await collect(chunk(b"{}", signer=STRANGER))
    assert err.value.code == ErrorCode.BAD_SIGNATURE
    with pytest.raises(RpcError) as err:
        await collect(chunk(b"{}", to=STRANGER))
    assert err.value.code == ErrorCode.DECRYPTION_FAILED


async def test_an_infrastructure_error_ends_the_stream_with_its_code() -> None:
    failure = error_response("r1", RpcError(ErrorCode.NO_CAPACITY, "all slots busy"))
    with pytest.raises(RpcError) as err:
        await collect(chunk(b'{"a":1}'), failure)
    assert err.value.code == ErrorCode.NO_CAPACITY


async def test_a_model_error_is_decrypted() -> None:
    upstream = {"error": {"message": "context too long", "type": "invalid_request_error"}}
    failure = model_error_response("r1", PROVIDER, user_public_key=USER.public_key,
                                   provider_model_error=upstream)
    assert failure.error is not None and failure.error.is_signed
    with pytest.raises(RpcError) as err:
        await collect(failure)
    assert err.value.code == ErrorCode.BACKEND_ERROR
    assert err.value.data is not None and err.value.data["providerModelError"] == upstream
    forged = model_error_response("r1", STRANGER, user_public_key=USER.public_key,
                                  provider_model_error=upstream)
    with pytest.raises(RpcError) as err:
        await collect(forged)
    assert err.value.code == ErrorCode.BAD_SIGNATURE


def test_a_chunk_message_is_bare_hex() -> None:
    res = chunk(b"{}").result
    assert res is not None and not res.message.startswith("0x")
    assert all(c in "0123456789abcdef" for c in res.message)
    assert len(ecies_encrypt_hex(USER.public_key, b"{}")) == len(res.message)


# -- session.report ---------------------------------------------------------------------------
def test_report_round_trip() -> None:
    req = parse_request(wire(report_request(USER, session_id=SESSION)))
    assert req.params.message == SESSION
    req.params.verify(USER.public_key)
    resp = report_response(req.id, PROVIDER, session_id=SESSION, chain_id=CHAIN,
                           tps_scaled1000=2**40, ttft_ms=-5, input_tokens=3, output_tokens=4)
    from proxy_router.morrpc.lumerin import SessionReportRes

    report = check_report_response(parse_response(wire(resp), SessionReportRes),
                                   provider_public_key=PROVIDER.public_key, session_id=SESSION,
                                   chain_id=CHAIN)
    assert (report.tps_scaled1000, report.ttft_ms) == (2**32 - 1, 0)  # clamped, not wrapped
    with pytest.raises(RpcError):
        check_report_response(parse_response(wire(resp), SessionReportRes),
                              provider_public_key=STRANGER.public_key, session_id=SESSION,
                              chain_id=CHAIN)
    with pytest.raises(RpcError):
        check_report_response(parse_response(wire(resp), SessionReportRes),
                              provider_public_key=PROVIDER.public_key, session_id="0x" + "00" * 32,
                              chain_id=CHAIN)


# -- errors and requests in general -----------------------------------------------------------
@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_text_maps_back_to_its_code(code: ErrorCode) -> None:
    assert classify_error(error_text(RpcError(code, "some detail"))) == code


@pytest.mark.parametrize(("text", "code"), [
    # texts the reference provider sends (controller_morrpc.go, proxy_receiver.go, mor_rpc.go)
    ("unknown method: unknown method: foo", ErrorCode.UNKNOWN_METHOD),
    ("failed to unmarshal request: invalid character", ErrorCode.BAD_REQUEST),
    ("request validation failed: Key: 'SessionReq.Key'", ErrorCode.BAD_REQUEST),
    ("received invalid signature from provider", ErrorCode.BAD_SIGNATURE),
    ("invalid signature", ErrorCode.BAD_SIGNATURE),
    ("no capacity", ErrorCode.NO_CAPACITY),
    ("Provider at capacity", ErrorCode.NO_CAPACITY),
    ("session expired", ErrorCode.SESSION_EXPIRED),
    ("Session is closed", ErrorCode.SESSION_CLOSED),
    ("session cannot be loaded not found", ErrorCode.SESSION_NOT_FOUND),
    ("failed to get bid: execution reverted", ErrorCode.BID_NOT_FOUND),
    ("failed to prompt: dial tcp: connection refused", ErrorCode.BACKEND_ERROR),
    ("Over spend limit", ErrorCode.INSUFFICIENT_FUNDS),
    ("something new", ErrorCode.INTERNAL),
])
def test_reference_error_texts_are_classified(text: str, code: ErrorCode) -> None:
    assert classify_error(text) == code


@pytest.mark.parametrize("obj", [
    {"id": 1, "method": "network.ping", "params": {}},  # id must be a string
    {"id": "1", "method": 5, "params": {}},
    {"id": "1", "method": "network.ping"},  # params missing
    {"id": "1", "method": "network.ping", "params": {"nonce": "zz", "signature": "0x01"}},
    {"id": "x" * 300, "method": "network.ping", "params": {}},
])
def test_malformed_requests_are_bad_requests(obj: dict[str, Any]) -> None:
    with pytest.raises(RpcError) as err:
        parse_request(obj)
    assert err.value.code == ErrorCode.BAD_REQUEST


def test_an_unknown_method_is_named_as_the_reference_does() -> None:
    with pytest.raises(RpcError) as err:
        parse_request({"id": "1", "method": "session.nope", "params": {}})
    assert err.value.code == ErrorCode.UNKNOWN_METHOD
    assert error_text(err.value) == "unknown method: unknown method: session.nope"


def test_freshness_window() -> None:
    check_fresh(1_000_000, max_age_ms=1000, now=1_000_500)
    for ts in (998_000, 1_100_000):
        with pytest.raises(RpcError) as err:
            check_fresh(ts, max_age_ms=1000, max_skew_ms=5000, now=1_000_000)
        assert err.value.code == ErrorCode.STALE_MESSAGE


def test_a_report_request_names_its_session() -> None:
    from proxy_router.morrpc.lumerin import SessionReportReq

    assert report_request(USER, session_id=SESSION).params.session_id == SESSION
    for bad in ("", "5e" * 32, "0x1234", "0x" + "zz" * 32):
        with pytest.raises(RpcError) as err:
            _ = SessionReportReq(bad, 1).session_id
        assert err.value.code == ErrorCode.BAD_REQUEST


def test_a_zero_spend_is_accepted_as_the_reference_does() -> None:
    req = parse_request(wire(session_request(USER, bid_id=BID, spend=0)))
    assert req.params.spend == 0
    check_session_request(req.params)
