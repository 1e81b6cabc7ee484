"""The client's checks against a provider (or man in the middle) that misbehaves on the wire.

A scripted server holds the real provider key, so every failure here is caught by the
binding checks (request nonce, chunk AAD, trailer count and digest), not by the signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from proxy_router.morrpc import (
    ErrorCode,
    Role,
    RpcClient,
    RpcError,
    SessionKey,
    Signer,
    derive_cipher,
)
from proxy_router.morrpc.protocol import chunk_aad_prefix, chunk_text, result_frame

Script = Callable[[dict[str, Any], web.WebSocketResponse], Awaitable[None]]


@pytest.fixture
async def scripted(provider: Signer) -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    """Start a server that answers every request with ``script``; returns its endpoint."""
    runners: list[web.AppRunner] = []

    async def start(script: Script) -> str:
        async def handle(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                frame = json.loads(msg.data)
                if "id" in frame:
                    await script(frame, ws)
            return ws

        app = web.Application()
        app.router.add_get("/mor-rpc", handle)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


class Stream:
    """Builds correct chunks and trailer for one request, so a script can corrupt one thing."""

    def __init__(self, provider: Signer, request: dict[str, Any]) -> None:
        key = request["params"]["key"]
        self.provider = provider
        self.request = request
        self.cipher = derive_cipher(provider, key, Role.PROVIDER)
        self.prefix = chunk_aad_prefix(request["id"], request["nonce"])
        self.digest = hashlib.sha256()

    def chunk(self, seq: int, data: bytes, *, aad_seq: int | None = None) -> tuple[str, bytes]:
        aad = self.prefix + (seq if aad_seq is None else aad_seq).to_bytes(8, "big")
        sealed = self.cipher.seal(data, aad)
        self.digest.update(len(sealed).to_bytes(4, "big") + sealed)
        return chunk_text(json.dumps(self.request["id"]), seq,
                          base64.b64encode(sealed).decode()), sealed

    def trailer(self, chunks: int, digest: str | None = None) -> str:
        result = {"chunks": chunks, "digest": digest or "0x" + self.digest.hexdigest()}
        frame = result_frame(self.request["id"], result, self.request["nonce"])
        return json.dumps(self.provider.sign_frame(frame))


class ListSink:
    """Collects what ``RpcStream.relay`` hands over."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, chunk: bytes) -> bool:
        self.chunks.append(chunk)
        return True

    async def drain(self) -> None:
        pass


RunStream = Callable[[str, Signer, Signer], Awaitable[list[bytes]]]


@pytest.fixture(params=["iterated", "relayed"])
def run_stream(request: pytest.FixtureRequest) -> RunStream:
    """Read one stream to its end, with ``async for`` or with ``relay`` (the consumer's
    per-token path): every check must hold on both."""
    async def run(endpoint: str, consumer: Signer, provider: Signer) -> list[bytes]:
        key = SessionKey.generate()
        async with RpcClient(endpoint, consumer, provider.address, first_frame_timeout=5,
                             frame_timeout=5) as rpc:
            rpc.provider_public_key = provider.public_key
            cipher = await rpc.cipher_for(key)
            stream = rpc.stream("x", {"key": key.public_key_hex}, cipher=cipher)
            if request.param == "iterated":
                return [c async for c in stream]
            sink = ListSink()
            await stream.relay(sink)
            return sink.chunks
    return run


async def test_honest_script_passes(scripted: Callable[[Script], Awaitable[str]],
                                    consumer: Signer, provider: Signer,
                                    run_stream: RunStream) -> None:
    async def honest(request: dict[str, Any], ws: web.WebSocketResponse) -> None:
        stream = Stream(provider, request)
        for seq in range(3):
            await ws.send_str(stream.chunk(seq, b"ok")[0])
        await ws.send_str(stream.trailer(3))

    assert await run_stream(await scripted(honest), consumer, provider) == [b"ok"] * 3


async def test_recorded_response_replayed_to_a_new_request_is_rejected(
        scripted: Callable[[Script], Awaitable[str]], consumer: Signer,
        provider: Signer) -> None:
    """Request ids restart at 1 when a consumer restarts; the nonce binding still holds."""
    recorded = provider.sign_frame(result_frame(1, {"ok": True}, "0x" + "0d" * 16))

    async def replay(request: dict[str, Any], ws: web.WebSocketResponse) -> None:
        assert request["id"] == recorded["id"]
        await ws.send_str(json.dumps(recorded))

    async with RpcClient(await scripted(replay), consumer, provider.address) as rpc:
        with pytest.raises(RpcError) as err:
            await rpc.call("x", {})
    assert err.value.code is ErrorCode.REPLAYED_MESSAGE


async def test_truncated_stream_is_detected_by_the_signed_count(
        scripted: Callable[[Script], Awaitable[str]], consumer: Signer,
        provider: Signer, run_stream: RunStream) -> None:
    async def truncate(request: dict[str, Any], ws: web.WebSocketResponse) -> None:
        stream = Stream(provider, request)
        await ws.send_str(stream.chunk(0, b"a")[0])
        stream.chunk(1, b"dropped in transit")
        await ws.send_str(stream.trailer(2))

    with pytest.raises(RpcError) as err:
        await run_stream(await scripted(truncate), consumer, provider)
    assert err.value.code is ErrorCode.STREAM_INTEGRITY


async def test_chunk_that_differs_from_the_signed_digest_is_detected(
        scripted: Callable[[Script], Awaitable[str]], consumer: Signer,
        provider: Signer, run_stream: RunStream) -> None:
    async def substitute(request: dict[str, Any], ws: web.WebSocketResponse) -> None:
        stream = Stream(provider, request)
        await ws.send_str(stream.chunk(0, b"what was sent")[0])
        await ws.send_str(stream.trailer(1, digest="0x" + "00" * 32))

    with pytest.raises(RpcError) as err:
        await run_stream(await scripted(substitute), consumer, provider)
    assert err.value.code is ErrorCode.STREAM_INTEGRITY


async def test_reordered_chunks_are_rejected(scripted: Callable[[Script], Awaitable[str]],
                                             consumer: Signer, provider: Signer,
                                             run_stream: RunStream) -> None:
    async def reorder(request: dict[str, Any], ws: web.WebSocketResponse) -> None:
        stream = Stream(provider, request)
        first, second = stream.chunk(0, b"a")[0], stream.chunk(1, b"b")[0]
        await ws.send_str(second)
        await ws.send_str(first)

    with pytest.raises(RpcError) as err:
        await run_stream(await scripted(reorder), consumer, provider)
    assert err.value.code is ErrorCode.STREAM_INTEGRITY


async def test_chunk_relabelled_with_another_seq_fails_decryption(
        scripted: Callable[[Script], Awaitable[str]], consumer: Signer,
        provider: Signer, run_stream: RunStream) -> None:
    async def relabel(request: dict[str, Any], ws: web.WebSocketResponse) -> None:
        stream = Stream(provider, request)
        await ws.send_str(stream.chunk(0, b"sealed as chunk 5", aad_seq=5)[0])

    with pytest.raises(RpcError) as err:
        await run_stream(await scripted(relabel), consumer, provider)
    assert err.value.code is ErrorCode.DECRYPTION_FAILED


async def test_chunk_from_another_request_fails_decryption(
        scripted: Callable[[Script], Awaitable[str]], consumer: Signer,
        provider: Signer, run_stream: RunStream) -> None:
    async def transplant(request: dict[str, Any], ws: web.WebSocketResponse) -> None:
        other = Stream(provider, {**request, "nonce": "0x" + "ab" * 16})
        await ws.send_str(other.chunk(0, b"belongs elsewhere")[0])

    with pytest.raises(RpcError) as err:
        await run_stream(await scripted(transplant), consumer, provider)
    assert err.value.code is ErrorCode.DECRYPTION_FAILED


async def test_garbled_chunk_encoding_is_decryption_failed(
        scripted: Callable[[Script], Awaitable[str]], consumer: Signer,
        provider: Signer, run_stream: RunStream) -> None:
    async def garble(request: dict[str, Any], ws: web.WebSocketResponse) -> None:
        await ws.send_str(chunk_text(json.dumps(request["id"]), 0, "not*base64"))

    with pytest.raises(RpcError) as err:
        await run_stream(await scripted(garble), consumer, provider)
    assert err.value.code is ErrorCode.DECRYPTION_FAILED


async def test_error_signed_by_a_stranger_is_bad_signature(
        scripted: Callable[[Script], Awaitable[str]], consumer: Signer,
        provider: Signer, stranger: Signer) -> None:
    async def inject(request: dict[str, Any], ws: web.WebSocketResponse) -> None:
        frame = {"id": request["id"], "error": {"code": "NO_CAPACITY", "message": "go away"},
                 "re": request["nonce"]}
        await ws.send_str(json.dumps(stranger.sign_frame(frame)))

    async with RpcClient(await scripted(inject), consumer, provider.address) as rpc:
        with pytest.raises(RpcError) as err:
            await rpc.call("x", {})
    assert err.value.code is ErrorCode.BAD_SIGNATURE
