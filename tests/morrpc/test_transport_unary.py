"""Unary requests over a live WebSocket: results, error codes, and frame authentication."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from proxy_router import __version__
from proxy_router.morrpc import ErrorCode, RpcClient, RpcError, RpcServer, Signer
from proxy_router.morrpc.protocol import MAX_FRAME_BYTES, request_frame
from proxy_router.morrpc.signing import recover_frame_signer

from .conftest import LiveServer, exchange
from .serve import register_test_methods


async def test_ping_reports_version_frame_limit_and_echoes_the_nonce(client: RpcClient) -> None:
    result = await client.call("network.ping", {"nonce": "0xfeed"})
    assert result == {"version": __version__, "protocol": "mor-rpc/1", "nonce": "0xfeed",
                      "maxFrameBytes": MAX_FRAME_BYTES}


async def test_ping_helper_learns_the_providers_public_key(client: RpcClient,
                                                           provider: Signer) -> None:
    await client.ping()
    assert client.provider_public_key == provider.public_key


async def test_handler_sees_the_verified_sender(client: RpcClient, consumer: Signer) -> None:
    result = await client.call("test.echo", {"big": "10000000000000000000"})
    assert result == {"params": {"big": "10000000000000000000"}, "sender": consumer.address}


@pytest.mark.parametrize("code", [ErrorCode.NO_CAPACITY, ErrorCode.SESSION_EXPIRED,
                                  ErrorCode.NOT_SESSION_USER])
async def test_error_frames_carry_code_message_and_data(client: RpcClient,
                                                        code: ErrorCode) -> None:
    with pytest.raises(RpcError) as err:
        await client.call("test.fail", {"code": code})
    assert (err.value.code, err.value.message, err.value.data) == (
        code, "requested failure", {"why": "test"})


async def test_unknown_method(client: RpcClient) -> None:
    with pytest.raises(RpcError) as err:
        await client.call("no.such.method", {})
    assert err.value.code is ErrorCode.UNKNOWN_METHOD


async def test_handler_crash_is_internal_without_leaking_details(client: RpcClient) -> None:
    with pytest.raises(RpcError) as err:
        await client.call("test.crash", {})
    assert err.value.code is ErrorCode.INTERNAL
    assert "secret" not in err.value.message


async def test_unsignable_result_is_an_internal_error_not_silence(client: RpcClient) -> None:
    with pytest.raises(RpcError) as err:
        await client.call("test.float", {})
    assert err.value.code is ErrorCode.INTERNAL


async def test_calling_a_stream_method_unary_is_refused(client: RpcClient) -> None:
    with pytest.raises(RpcError, match="stream"):
        await client.call("test.count", {"key": "0x" + "02" * 33, "n": 1})


async def test_requests_run_concurrently_on_one_socket(client: RpcClient,
                                                       live: LiveServer) -> None:
    slow = asyncio.create_task(client.call("test.sleep", {"ms": 500}))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await client.ping()
    assert time.monotonic() - started < 0.3
    assert not slow.done()
    assert await slow == {"slept": 500}
    assert live.server.connections_accepted == 1


async def test_response_signed_by_another_key_is_bad_signature(
        live: LiveServer, consumer: Signer, stranger: Signer) -> None:
    async with RpcClient(live.endpoint, consumer, stranger.address) as impostor_check:
        with pytest.raises(RpcError) as err:
            await impostor_check.ping()
    assert err.value.code is ErrorCode.BAD_SIGNATURE


# -- hand-crafted frames on a raw socket ----------------------------------------------------


def ping(signer: Signer, request_id: int = 1, **envelope: object) -> dict:
    return signer.sign_frame({**request_frame(request_id, "network.ping", {}, signer.address),
                              **envelope})


async def test_every_reply_is_signed_by_the_provider_and_bound_to_the_request(
        raw_ws: aiohttp.ClientWebSocketResponse, consumer: Signer, provider: Signer) -> None:
    frame = ping(consumer)
    reply = await exchange(raw_ws, frame)
    assert recover_frame_signer(reply) == provider.address
    assert reply["re"] == frame["nonce"] and reply["id"] == 1
    assert set(reply) == {"id", "result", "re", "timestamp", "nonce", "signature"}


async def test_replayed_frame_is_rejected(raw_ws: aiohttp.ClientWebSocketResponse,
                                          consumer: Signer) -> None:
    frame = ping(consumer)
    assert "result" in await exchange(raw_ws, frame)
    reply = await exchange(raw_ws, frame)
    assert reply["error"]["code"] == "REPLAYED_MESSAGE"


async def test_replay_on_another_connection_is_rejected_too(
        live: LiveServer, raw_ws: aiohttp.ClientWebSocketResponse, consumer: Signer) -> None:
    frame = ping(consumer)
    assert "result" in await exchange(raw_ws, frame)
    async with aiohttp.ClientSession() as http, http.ws_connect(live.url) as other:
        assert (await exchange(other, frame))["error"]["code"] == "REPLAYED_MESSAGE"


@pytest.mark.parametrize("age", [120, -120])
async def test_stale_or_future_frame_is_rejected(raw_ws: aiohttp.ClientWebSocketResponse,
                                                 consumer: Signer, age: int) -> None:
    reply = await exchange(raw_ws, ping(consumer, timestamp=int(time.time()) - age))
    assert reply["error"]["code"] == "STALE_MESSAGE"
    assert abs(reply["error"]["data"]["serverTime"] - time.time()) < 5


async def test_frame_signed_by_a_key_other_than_from_is_bad_signature(
        raw_ws: aiohttp.ClientWebSocketResponse, consumer: Signer, stranger: Signer) -> None:
    forged = stranger.sign_frame(request_frame(1, "network.ping", {}, consumer.address))
    reply = await exchange(raw_ws, forged)
    assert reply["error"]["code"] == "BAD_SIGNATURE"


async def test_tampered_frame_is_bad_signature(raw_ws: aiohttp.ClientWebSocketResponse,
                                               consumer: Signer) -> None:
    frame = consumer.sign_frame(request_frame(1, "test.echo", {"amount": "1"}, consumer.address))
    frame["params"]["amount"] = "1000"
    assert (await exchange(raw_ws, frame))["error"]["code"] == "BAD_SIGNATURE"


async def test_unsigned_frame_is_bad_signature(raw_ws: aiohttp.ClientWebSocketResponse,
                                               consumer: Signer) -> None:
    frame = {**request_frame(1, "network.ping", {}, consumer.address),
             "timestamp": int(time.time()), "nonce": "0x01"}
    assert (await exchange(raw_ws, frame))["error"]["code"] == "BAD_SIGNATURE"


@pytest.mark.parametrize("frame", ["not json", "[]", '{"id": 1}',
                                   '{"id": 1, "method": "x", "params": [], "from": "0x"}'])
async def test_malformed_frames_are_bad_request(raw_ws: aiohttp.ClientWebSocketResponse,
                                                frame: str, provider: Signer) -> None:
    await raw_ws.send_str(frame)
    reply = (await raw_ws.receive_json(timeout=5))
    assert reply["error"]["code"] == "BAD_REQUEST"
    assert recover_frame_signer(reply) == provider.address


async def test_duplicate_in_flight_id_is_bad_request(raw_ws: aiohttp.ClientWebSocketResponse,
                                                     consumer: Signer) -> None:
    slow = consumer.sign_frame(request_frame(9, "test.sleep", {"ms": 300}, consumer.address))
    await raw_ws.send_str(json.dumps(slow))
    reply = await exchange(raw_ws, ping(consumer, request_id=9))
    assert reply["error"]["code"] == "BAD_REQUEST" and reply["id"] == 9


async def test_in_flight_limit_per_connection(provider: Signer, consumer: Signer) -> None:
    server = RpcServer(provider, max_inflight=2)
    register_test_methods(server)
    port = await server.start()
    try:
        async with RpcClient(f"127.0.0.1:{port}", consumer, provider.address) as rpc:
            slow = [asyncio.create_task(rpc.call("test.sleep", {"ms": 300})) for _ in range(2)]
            await asyncio.sleep(0.05)
            with pytest.raises(RpcError) as err:
                await rpc.ping()
            assert err.value.code is ErrorCode.RATE_LIMITED
            await asyncio.gather(*slow)
    finally:
        await server.stop()
