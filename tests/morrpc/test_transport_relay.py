"""``RpcStream.relay``: chunks handed to a sink from the socket's reader (the consumer's
per-token path), with the guarantees of ``async for``: order, the signed trailer,
flow control, the frame timeout, and the provider's work stopped when the relay ends early."""

from __future__ import annotations

import asyncio

import pytest

from proxy_router.morrpc import (
    STREAM_WINDOW,
    ErrorCode,
    RpcClient,
    RpcError,
    RpcStream,
    RpcTimeout,
    SessionKey,
    Signer,
)

from .conftest import LiveServer


class Sink:
    """Collects chunks; ``full`` makes it refuse more until ``drain`` is let through;
    ``fail_at`` makes its n-th write raise, as a client that left does."""

    def __init__(self, *, full: bool = False, fail_at: int | None = None) -> None:
        self.chunks: list[bytes] = []
        self.full = full
        self.fail_at = fail_at
        self.drains = 0
        self.let_drain = asyncio.Event()
        if not full:
            self.let_drain.set()

    def write(self, chunk: bytes) -> bool:
        if self.fail_at is not None and len(self.chunks) == self.fail_at:
            raise ConnectionResetError("the client closed the stream")
        self.chunks.append(chunk)
        return not self.full

    async def drain(self) -> None:
        self.drains += 1
        await self.let_drain.wait()
        self.full = False


async def open_stream(client: RpcClient, key: SessionKey, **params: object) -> RpcStream:
    cipher = await client.cipher_for(key)
    return client.stream("test.count", {"key": key.public_key_hex, **params}, cipher=cipher)


async def until(check: object, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if callable(check) and check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_a_relayed_stream_reaches_the_sink_in_order_with_its_trailer_checked(
        client: RpcClient, session_key: SessionKey) -> None:
    stream = await open_stream(client, session_key, n=5, tag="r")
    sink = Sink()
    await stream.relay(sink)
    assert sink.chunks == [b"r:0", b"r:1", b"r:2", b"r:3", b"r:4"]
    assert stream.result is not None and stream.result["chunks"] == 5


async def test_chunks_read_before_the_relay_and_queued_meanwhile_are_not_lost(
        client: RpcClient, session_key: SessionKey) -> None:
    """The consumer reads a stream's opening with ``async for``, then relays the rest:
    what arrived in between goes to the sink first, in order."""
    stream = await open_stream(client, session_key, n=40, tag="q")
    first = await anext(stream)
    await asyncio.sleep(0.2)  # the rest arrives and waits in the request's queue
    sink = Sink()
    await stream.relay(sink)
    assert [first, *sink.chunks] == [f"q:{i}".encode() for i in range(40)]


async def test_fifty_relays_share_one_socket(client: RpcClient, live: LiveServer,
                                             session_key: SessionKey) -> None:
    async def relayed(i: int) -> list[bytes]:
        stream = await open_stream(client, session_key, n=40, tag=f"s{i}", delay_ms=1)
        sink = Sink()
        await stream.relay(sink)
        return sink.chunks

    results = await asyncio.gather(*(relayed(i) for i in range(50)))
    for i, chunks in enumerate(results):
        assert chunks == [f"s{i}:{j}".encode() for j in range(40)]
    assert live.server.connections_accepted == 1


async def test_a_full_sink_holds_credit_back_so_the_provider_stops_after_one_window(
        client: RpcClient, live: LiveServer, session_key: SessionKey) -> None:
    total = STREAM_WINDOW * 4
    stream = await open_stream(client, session_key, n=total, tag="fc")
    sink = Sink(full=True)
    relay = asyncio.create_task(stream.relay(sink))
    await until(lambda: len(sink.chunks) >= STREAM_WINDOW)
    await asyncio.sleep(0.3)
    assert live.state.produced["fc"] <= STREAM_WINDOW + 1
    assert len(sink.chunks) <= STREAM_WINDOW
    sink.let_drain.set()  # the client reads again: credit flows, the stream completes
    await asyncio.wait_for(relay, 10)
    assert len(sink.chunks) == total and sink.drains >= 1
    assert stream.result is not None and stream.result["chunks"] == total


async def test_a_sink_that_raises_ends_the_relay_and_cancels_the_providers_work(
        client: RpcClient, live: LiveServer, session_key: SessionKey) -> None:
    stream = await open_stream(client, session_key, n=10_000, delay_ms=5, tag="gone")
    with pytest.raises(ConnectionResetError):
        await stream.relay(Sink(fail_at=3))
    await until(lambda: "gone" in live.state.cancelled)
    assert live.state.produced["gone"] < 100
    await client.ping()  # the socket is still fine for everyone else


async def test_cancelling_the_relaying_task_cancels_the_providers_work(
        client: RpcClient, live: LiveServer, session_key: SessionKey) -> None:
    stream = await open_stream(client, session_key, n=10_000, delay_ms=5, tag="killed")
    task = asyncio.create_task(stream.relay(Sink()))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: "killed" in live.state.cancelled)


async def test_an_error_frame_ends_the_relay_with_the_providers_signed_error(
        client: RpcClient, session_key: SessionKey) -> None:
    cipher = await client.cipher_for(session_key)
    stream = client.stream("test.fail_mid", {"key": session_key.public_key_hex}, cipher=cipher)
    sink = Sink()
    with pytest.raises(RpcError) as err:
        await stream.relay(sink)
    assert sink.chunks == [b"one", b"two"]
    assert err.value.code is ErrorCode.BACKEND_ERROR and err.value.data == {"chunks": 2}


async def test_the_frame_timeout_counts_from_the_last_relayed_chunk(
        live: LiveServer, consumer: Signer, provider: Signer, session_key: SessionKey) -> None:
    """A stream that keeps sending outlives the frame timeout many times over; one that
    goes silent for longer than it fails with ``RpcTimeout`` and is cancelled."""
    async with RpcClient(live.endpoint, consumer, provider.address,
                         first_frame_timeout=5, frame_timeout=0.3) as client:
        steady = await open_stream(client, session_key, n=20, delay_ms=60, tag="steady")
        sink = Sink()
        await steady.relay(sink)  # 1.2 s in all, never 0.3 s without a chunk
        assert len(sink.chunks) == 20

        silent = await open_stream(client, session_key, n=3, delay_ms=1_000, tag="silent")
        assert await anext(silent) == b"silent:0"  # a first chunk may take longer
        with pytest.raises(RpcTimeout):
            await silent.relay(Sink())
        await until(lambda: "silent" in live.state.cancelled)
