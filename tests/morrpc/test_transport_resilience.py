"""Failures of the link: prompt errors instead of hangs, reconnection, timeouts, the pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from proxy_router.morrpc import (
    ErrorCode,
    RpcClient,
    RpcError,
    RpcPool,
    RpcTimeout,
    RpcUnavailable,
    SessionKey,
    Signer,
)
from proxy_router.ports import free_port

from .conftest import LiveServer, ServerProcess


async def test_server_killed_mid_stream_fails_every_pending_request_promptly(
        server_process: ServerProcess, consumer: Signer, provider: Signer) -> None:
    key = SessionKey.generate()
    async with RpcClient(f"127.0.0.1:{server_process.port}", consumer,
                         provider.address) as rpc:
        cipher = await rpc.cipher_for(key)
        stream = rpc.stream("test.count", {"key": key.public_key_hex, "n": 100_000,
                                           "delay_ms": 10}, cipher=cipher)
        assert await anext(stream) == b":0"
        pending = [asyncio.create_task(rpc.call("test.sleep", {"ms": 60_000}))
                   for _ in range(5)]
        await asyncio.sleep(0.05)

        await server_process.kill()
        started = time.monotonic()
        with pytest.raises(RpcUnavailable):
            async for _ in stream:
                pass
        for task in pending:
            with pytest.raises(RpcUnavailable):
                await task
        assert time.monotonic() - started < 2


async def test_client_reconnects_after_the_provider_restarts(
        server_process: ServerProcess, consumer: Signer, provider: Signer) -> None:
    async with RpcClient(f"127.0.0.1:{server_process.port}", consumer,
                         provider.address) as rpc:
        await rpc.ping()
        await server_process.kill()
        with pytest.raises(RpcUnavailable):  # down: fails fast, no hang
            for _ in range(50):
                await rpc.ping()
                await asyncio.sleep(0.02)
        await server_process.start()
        assert (await rpc.ping())["protocol"] == "mor-rpc/1"
        assert rpc.connects == 2


async def test_graceful_server_shutdown_mid_stream_raises_unavailable(
        live: LiveServer, client: RpcClient, session_key: SessionKey) -> None:
    cipher = await client.cipher_for(session_key)
    stream = client.stream("test.count", {"key": session_key.public_key_hex, "n": 100_000,
                                          "delay_ms": 10}, cipher=cipher)
    await anext(stream)
    await live.server.stop()
    with pytest.raises(RpcUnavailable):
        async for _ in stream:
            pass


async def test_nothing_listening_is_unavailable_at_once(consumer: Signer,
                                                        provider: Signer) -> None:
    async with RpcClient(f"127.0.0.1:{free_port()}", consumer, provider.address) as rpc:
        started = time.monotonic()
        with pytest.raises(RpcUnavailable):
            await rpc.ping()
        assert time.monotonic() - started < 1


@pytest.fixture
async def black_hole() -> AsyncIterator[int]:
    """Accepts TCP connections and never answers the WebSocket upgrade."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_connect_timeout(black_hole: int, consumer: Signer, provider: Signer) -> None:
    async with RpcClient(f"127.0.0.1:{black_hole}", consumer, provider.address,
                         connect_timeout=0.2) as rpc:
        started = time.monotonic()
        with pytest.raises(RpcTimeout):
            await rpc.ping()
        assert time.monotonic() - started < 1


async def test_first_frame_timeout_cancels_the_providers_work(
        live: LiveServer, consumer: Signer, provider: Signer) -> None:
    async with RpcClient(live.endpoint, consumer, provider.address,
                         first_frame_timeout=0.2) as rpc:
        with pytest.raises(RpcTimeout):
            await rpc.call("test.sleep", {"ms": 5_000, "tag": "late"})
        for _ in range(100):
            if "late" in live.state.cancelled:
                break
            await asyncio.sleep(0.01)
        assert "late" in live.state.cancelled
        assert (await rpc.call("test.sleep", {"ms": 1}))["slept"] == 1  # link still fine


async def test_per_call_first_frame_timeout(client: RpcClient) -> None:
    with pytest.raises(RpcTimeout):
        await client.call("test.sleep", {"ms": 5_000}, first_frame_timeout=0.1)


async def test_gap_between_stream_frames_times_out(
        live: LiveServer, consumer: Signer, provider: Signer) -> None:
    key = SessionKey.generate()
    async with RpcClient(live.endpoint, consumer, provider.address, frame_timeout=0.2) as rpc:
        cipher = await rpc.cipher_for(key)
        stream = rpc.stream("test.count", {"key": key.public_key_hex, "n": 3,
                                           "delay_ms": 2_000}, cipher=cipher)
        with pytest.raises(RpcTimeout):
            async for _ in stream:
                pass


async def test_a_steady_stream_outlasting_frame_timeout_in_total_is_fine(
        live: LiveServer, consumer: Signer, provider: Signer) -> None:
    key = SessionKey.generate()
    async with RpcClient(live.endpoint, consumer, provider.address, frame_timeout=0.3) as rpc:
        cipher = await rpc.cipher_for(key)
        stream = rpc.stream("test.count", {"key": key.public_key_hex, "n": 10,
                                           "delay_ms": 100}, cipher=cipher)
        assert len([chunk async for chunk in stream]) == 10


async def test_closed_client_refuses_new_requests(client: RpcClient) -> None:
    await client.ping()
    await client.close()
    with pytest.raises(RpcUnavailable):
        await client.ping()


async def test_pool_shares_one_client_per_provider(live: LiveServer, consumer: Signer,
                                                   provider: Signer, stranger: Signer) -> None:
    pool = RpcPool(consumer, first_frame_timeout=5)
    try:
        first = pool.get(live.endpoint, provider.address)
        assert pool.get(live.endpoint, provider.address.lower()) is first
        assert pool.get(live.endpoint, stranger.address) is not first
        await asyncio.gather(*(first.ping() for _ in range(10)))
        assert live.server.connections_accepted == 1
        assert first.first_frame_timeout == 5
        await pool.discard(live.endpoint, stranger.address)
        assert len(pool) == 1
    finally:
        await pool.close()
    assert len(pool) == 0 and not first.connected


async def test_error_from_the_wrong_provider_key_does_not_poison_the_link(
        live: LiveServer, consumer: Signer, stranger: Signer) -> None:
    async with RpcClient(live.endpoint, consumer, stranger.address) as rpc:
        for _ in range(2):
            with pytest.raises(RpcError) as err:
                await rpc.ping()
            assert err.value.code is ErrorCode.BAD_SIGNATURE
        assert rpc.connects == 1
