"""Streams: encrypted chunks multiplexed on one socket, signed trailer, flow control, cancel."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from proxy_router.morrpc import (
    STREAM_WINDOW,
    ErrorCode,
    RpcClient,
    RpcError,
    SessionKey,
)

from .conftest import LiveServer


async def collect(client: RpcClient, method: str, params: dict, key: SessionKey,
                  payload: bytes | None = None) -> tuple[list[bytes], dict | None]:
    cipher = await client.cipher_for(key)
    stream = client.stream(method, {**params, "key": key.public_key_hex}, cipher=cipher,
                           payload=payload)
    chunks = [chunk async for chunk in stream]
    return chunks, stream.result


async def test_chunks_arrive_decrypted_in_order_with_a_signed_trailer(
        client: RpcClient, session_key: SessionKey) -> None:
    chunks, trailer = await collect(client, "test.count", {"n": 5, "tag": "t"}, session_key)
    assert chunks == [b"t:0", b"t:1", b"t:2", b"t:3", b"t:4"]
    assert trailer is not None and trailer["chunks"] == 5 and trailer["n"] == 5
    assert trailer["digest"].startswith("0x") and len(trailer["digest"]) == 66


async def test_empty_stream_still_ends_with_a_signed_trailer(
        client: RpcClient, session_key: SessionKey) -> None:
    chunks, trailer = await collect(client, "test.count", {"n": 0}, session_key)
    assert chunks == [] and trailer is not None and trailer["chunks"] == 0


async def test_fifty_concurrent_streams_share_one_socket(
        client: RpcClient, live: LiveServer, session_key: SessionKey) -> None:
    results = await asyncio.gather(*(
        collect(client, "test.count", {"n": 40, "tag": f"s{i}", "delay_ms": 1}, session_key)
        for i in range(50)))
    for i, (chunks, trailer) in enumerate(results):
        assert chunks == [f"s{i}:{j}".encode() for j in range(40)]
        assert trailer is not None and trailer["chunks"] == 40
    assert live.server.connections_accepted == 1
    assert client.connects == 1


async def test_prompt_payload_travels_encrypted(client: RpcClient, live: LiveServer,
                                                session_key: SessionKey) -> None:
    prompt = b'{"messages":[{"role":"user","content":"top secret prompt"}]}'
    chunks, _ = await collect(client, "test.echo_payload", {}, session_key, payload=prompt)
    assert b"".join(chunks) == prompt
    [params] = live.state.raw_params
    assert b"top secret" not in json.dumps(params).encode()
    assert b"top secret" not in base64.b64decode(params["payload"])


async def test_payload_sealed_for_another_session_key_fails_to_decrypt(
        client: RpcClient, session_key: SessionKey) -> None:
    """The provider encrypts to the key in the request; a mismatched cipher cannot be read."""
    wrong = await client.cipher_for(SessionKey.generate())
    stream = client.stream("test.echo_payload", {"key": session_key.public_key_hex},
                           cipher=wrong, payload=b"hello")
    with pytest.raises(RpcError) as err:
        async for _ in stream:
            pass
    assert err.value.code is ErrorCode.DECRYPTION_FAILED


async def test_error_mid_stream_is_signed_and_says_how_many_chunks_came(
        client: RpcClient, session_key: SessionKey) -> None:
    cipher = await client.cipher_for(session_key)
    received = []
    with pytest.raises(RpcError) as err:
        async for chunk in client.stream("test.fail_mid", {"key": session_key.public_key_hex},
                                         cipher=cipher):
            received.append(chunk)
    assert received == [b"one", b"two"]
    assert err.value.code is ErrorCode.BACKEND_ERROR and err.value.data == {"chunks": 2}


async def test_a_handlers_own_connection_error_still_ends_the_stream_with_an_error(
        client: RpcClient, session_key: SessionKey) -> None:
    """Not mistaken for the consumer's socket closing: the consumer is told, not left hanging."""
    with pytest.raises(RpcError) as err:
        await collect(client, "test.backend_down", {}, session_key)
    assert err.value.code is ErrorCode.INTERNAL and err.value.data == {"chunks": 1}


async def test_stream_handler_must_choose_a_key_before_yielding(
        client: RpcClient, session_key: SessionKey) -> None:
    with pytest.raises(RpcError) as err:
        await collect(client, "test.no_key", {}, session_key)
    assert err.value.code is ErrorCode.INTERNAL


async def test_unknown_stream_method(client: RpcClient, session_key: SessionKey) -> None:
    with pytest.raises(RpcError) as err:
        await collect(client, "no.such.stream", {}, session_key)
    assert err.value.code is ErrorCode.UNKNOWN_METHOD


async def test_a_consumer_that_stops_reading_stops_the_producer_after_one_window(
        client: RpcClient, live: LiveServer, session_key: SessionKey) -> None:
    cipher = await client.cipher_for(session_key)
    total = STREAM_WINDOW * 8
    stream = client.stream("test.count", {"key": session_key.public_key_hex, "n": total,
                                          "tag": "fc"}, cipher=cipher)
    await stream.start()
    await asyncio.sleep(0.3)
    assert live.state.produced["fc"] <= STREAM_WINDOW + 1
    received = [chunk async for chunk in stream]  # and reading resumes it to the end
    assert len(received) == total and stream.result is not None


async def test_a_stalled_stream_does_not_block_others_on_the_socket(
        client: RpcClient, session_key: SessionKey) -> None:
    cipher = await client.cipher_for(session_key)
    stalled = client.stream("test.count", {"key": session_key.public_key_hex,
                                           "n": STREAM_WINDOW * 4}, cipher=cipher)
    await stalled.start()
    chunks, _ = await asyncio.wait_for(
        collect(client, "test.count", {"n": STREAM_WINDOW * 2, "tag": "free"}, session_key), 10)
    assert len(chunks) == STREAM_WINDOW * 2
    await stalled.aclose()


async def test_leaving_a_stream_early_cancels_the_providers_work(
        client: RpcClient, live: LiveServer, session_key: SessionKey) -> None:
    cipher = await client.cipher_for(session_key)
    async with client.stream("test.count", {"key": session_key.public_key_hex, "n": 10_000,
                                            "delay_ms": 5, "tag": "early"},
                             cipher=cipher) as stream:
        async for chunk in stream:
            if chunk == b"early:2":
                break
    for _ in range(100):
        if "early" in live.state.cancelled:
            break
        await asyncio.sleep(0.01)
    assert "early" in live.state.cancelled
    assert live.state.produced["early"] < 100
    await client.ping()  # the connection is still fine


async def test_cancelling_the_consumer_task_cancels_the_providers_work(
        client: RpcClient, live: LiveServer, session_key: SessionKey) -> None:
    async def consume() -> None:
        await collect(client, "test.count", {"n": 10_000, "delay_ms": 5, "tag": "killed"},
                      session_key)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if "killed" in live.state.cancelled:
            break
        await asyncio.sleep(0.01)
    assert "killed" in live.state.cancelled
