"""The consumer reaches Go providers in the reference's wire and ours in mor-rpc/1: the
same calls, the same result shapes, and in ``auto`` mode it finds out which by itself."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy_router.chain.encoding import Approval, Receipt, recover_blob_signer
from proxy_router.consumer.links import LumerinProvider, LumerinStream, ProviderPool
from proxy_router.morrpc import RpcPool, RpcServer
from proxy_router.morrpc.errors import ErrorCode, RpcError, RpcUnavailable
from proxy_router.morrpc.lumerin import (
    PING,
    SESSION_PROMPT,
    SESSION_REPORT,
    SESSION_REQUEST,
    LumerinServer,
    Request,
    Response,
    check_session_request,
    pong_response,
    prompt_chunk_response,
    prompt_done_response,
    report_response,
    session_response,
)
from proxy_router.morrpc.signing import Signer

PROVIDER = Signer.from_key("0x" + "a1" * 32)
USER = Signer.from_key("0x" + "b2" * 32)
BID = "0x" + "42" * 32
SESSION = "0x" + "5e" * 32
CHAIN = 31337


async def go_provider(request: Request[Any]) -> AsyncIterator[Response[Any]]:
    """What a Go proxy-router answers (built with the reference wire's own builders)."""
    if request.method == PING:
        yield pong_response(request, PROVIDER, "go")
    elif request.method == SESSION_REQUEST:
        check_session_request(request.params)
        yield session_response(request, PROVIDER, chain_id=CHAIN)
    elif request.method == SESSION_PROMPT:
        request.params.verify(USER.public_key)
        body = json.loads(request.params.message)
        if not body.get("stream"):
            whole = {"object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
            yield prompt_chunk_response(request.id, PROVIDER, user_public_key=USER.public_key,
                                        plaintext=json.dumps(whole).encode())
            return
        for word in ("Hello", " world"):
            chunk = {"object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {"content": word}}]}
            yield prompt_chunk_response(request.id, PROVIDER, user_public_key=USER.public_key,
                                        plaintext=json.dumps(chunk).encode())
        yield prompt_done_response(request.id, PROVIDER, user_public_key=USER.public_key)
    elif request.method == SESSION_REPORT:
        yield report_response(request.id, PROVIDER, session_id=request.params.session_id,
                              chain_id=CHAIN, tps_scaled1000=25_000, ttft_ms=350,
                              input_tokens=3, output_tokens=2)
    else:
        raise RpcError(ErrorCode.UNKNOWN_METHOD, f"no handler for {request.method}")


@pytest.fixture
async def go_port() -> AsyncIterator[int]:
    async with LumerinServer(go_provider, request_timeout=2) as server:
        yield server.port


def link(port: int) -> LumerinProvider:
    return LumerinProvider(f"127.0.0.1:{port}", USER, PROVIDER.address, CHAIN,
                           connect_timeout=2, first_frame_timeout=5, frame_timeout=5)


async def test_session_request_gives_an_approval_in_our_shape(go_port: int) -> None:
    reply = await link(go_port).call("session.request", {"bidId": BID, "spend": "10"})
    approval = bytes.fromhex(reply["approval"][2:])
    decoded = Approval.decode(approval)
    assert ("0x" + decoded.bid_id.hex(), decoded.user) == (BID, USER.address)
    assert recover_blob_signer(approval, bytes.fromhex(reply["approvalSig"][2:])) \
        == PROVIDER.address


async def test_a_streamed_prompt_comes_back_as_sse_events(go_port: int) -> None:
    provider = link(go_port)
    body = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
    stream = provider.stream("session.prompt", {"sessionId": SESSION}, cipher=None,
                             payload=body)
    chunks = [chunk async for chunk in stream]
    assert all(c.startswith(b"data: {") and c.endswith(b"\n\n") for c in chunks)
    words = [json.loads(c[6:])["choices"][0]["delta"]["content"] for c in chunks]
    assert words == ["Hello", " world"]


async def test_a_whole_answer_is_one_json_chunk_with_its_usage(go_port: int) -> None:
    stream = link(go_port).stream("session.prompt", {"sessionId": SESSION}, cipher=None,
                                  payload=b'{"model":"m","messages":[]}')
    assert isinstance(stream, LumerinStream)
    [whole] = [chunk async for chunk in stream]
    assert json.loads(whole)["object"] == "chat.completion"
    assert stream.result == {"usage": {"prompt_tokens": 3, "completion_tokens": 1}}


async def test_the_report_is_a_receipt_the_contract_reads(go_port: int) -> None:
    reply = await link(go_port).call("session.report", {"sessionId": SESSION})
    receipt = bytes.fromhex(reply["receipt"][2:])
    assert recover_blob_signer(receipt, bytes.fromhex(reply["signature"][2:])) \
        == PROVIDER.address
    decoded = Receipt.decode(receipt)
    assert ("0x" + decoded.session_id.hex(), decoded.chain_id) == (SESSION, CHAIN)
    assert (decoded.tps_x1000, decoded.ttft_ms, decoded.prompt_tokens,
            decoded.completion_tokens) == (25_000, 350, 3, 2)


async def test_a_pong_from_another_key_is_refused(go_port: int) -> None:
    impostor = LumerinProvider(f"127.0.0.1:{go_port}", USER, USER.address, CHAIN)
    with pytest.raises(RpcError):
        await impostor.ping()


async def test_auto_falls_back_to_the_reference_wire_and_remembers(go_port: int) -> None:
    pool = ProviderPool(RpcPool(USER, connect_timeout=2), CHAIN, wire="auto")
    try:
        endpoint = f"127.0.0.1:{go_port}"
        reply = await pool.get(endpoint, PROVIDER.address).call("session.request",
                                                                 {"bidId": BID})
        assert reply["approval"].startswith("0x")
        assert isinstance(pool.chosen(endpoint, PROVIDER.address), LumerinProvider)
        assert isinstance(pool.get(endpoint, PROVIDER.address), LumerinProvider)
    finally:
        await pool.close()


async def test_auto_keeps_our_own_protocol_with_our_provider() -> None:
    server = RpcServer(PROVIDER)
    port = await server.start()
    pool = ProviderPool(RpcPool(USER, connect_timeout=2), CHAIN, wire="auto")
    try:
        endpoint = f"127.0.0.1:{port}"
        assert "nonce" in await pool.get(endpoint, PROVIDER.address).call(
            "network.ping", {"nonce": "0x" + "00" * 16})
        assert not isinstance(pool.chosen(endpoint, PROVIDER.address), LumerinProvider)
    finally:
        await pool.close()
        await server.stop()


async def test_auto_reports_a_provider_that_is_down_as_unavailable() -> None:
    from proxy_router.ports import free_port
    pool = ProviderPool(RpcPool(USER, connect_timeout=1), CHAIN, wire="auto")
    try:
        with pytest.raises(RpcUnavailable):
            await pool.get(f"127.0.0.1:{free_port()}", PROVIDER.address).call(
                "session.request", {"bidId": BID})
    finally:
        await pool.close()
