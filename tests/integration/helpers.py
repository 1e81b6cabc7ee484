"""Helpers of the devnet tests (failures, attacks): HTTP calls to the consumer, raw MOR-RPC
frames to the provider, waiting, time travel, and the to-the-wei settlement checks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from proxy_router.chain.marketplace import Marketplace
from proxy_router.chain.types import Session
from proxy_router.dev.anvil import dev_key, rpc
from proxy_router.dev.devnet import DevnetState
from proxy_router.morrpc import (
    RpcClient,
    SessionKey,
    Signer,
    recover_frame_signer,
)
from proxy_router.morrpc.protocol import WS_PATH, encode_frame
from tests.integration.conftest import (
    MockBackend,
    mor_holdings,
)

OBSERVER = 7  # the anvil dev account that only reads (provider capabilities)
MESSAGES = [{"role": "user", "content": "Say hello."}]
DURATION = 300  # the shortest session the contract allows


async def request(method: str, url: str, *, json_body: Any = None, data: bytes | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.request(
            method, url, json=json_body, data=data, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def chat(base: str, *, headers: dict[str, str] | None = None, **body: Any
               ) -> tuple[int, dict[str, Any]]:
    body = {"messages": MESSAGES, "max_tokens": 8, **body}
    return await request("POST", f"{base}/v1/chat/completions", json_body=body, headers=headers)


def error_of(body: dict[str, Any], code: str) -> dict[str, Any]:
    """The OpenAI-shaped error object, after checking its shape and code."""
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    return error


async def holdings(market: Marketplace, state: DevnetState, *extra: str) -> dict[str, int]:
    """MOR of user, provider, marketplace, fee recipient and any ``extra`` wallets."""
    held = await mor_holdings(market, state)
    for address in extra:
        held[address] = await market.mor_balance(address)
    return held


def tx_count(state: DevnetState, address: str) -> int:
    return int(str(rpc(state.rpc_url, "eth_getTransactionCount", [address, "latest"])), 16)


async def next_second() -> None:
    """Sleep until just after the wall clock's next whole second."""
    await asyncio.sleep(1.02 - time.time() % 1)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s (last: {result!r})")
        await asyncio.sleep(0.2)


async def provider_capacity(state: DevnetState) -> dict[str, int]:
    async with RpcClient(state.provider_endpoint, Signer.from_key(dev_key(OBSERVER)),
                         state.provider_address) as client:
        caps = await client.call("provider.capabilities", {})
    (model,) = [m for m in caps["models"] if m["modelId"] == state.model_id]
    return dict(model["capacity"])


async def wait_provider_idle(state: DevnetState, timeout: float = 15) -> None:
    async def idle() -> bool:
        cap = await provider_capacity(state)
        return cap["sessions"] == cap["promptsInFlight"] == 0

    await eventually(idle, timeout, "the provider's slot was not freed")


async def open_session(state: DevnetState, duration: int = DURATION) -> str:
    status, body = await request(
        "POST", f"{state.consumer_base}/blockchain/models/{state.model_id}/session",
        json_body={"sessionDuration": duration}, headers=state.auth())
    assert status == 201, body
    return str(body["sessionId"])


async def close_session(state: DevnetState, session_id: str) -> dict[str, Any]:
    status, body = await request(
        "POST", f"{state.consumer_base}/blockchain/sessions/{session_id}/close",
        headers=state.auth())
    assert status == 200, body
    return body


async def settled(market: Marketplace, session_id: str) -> Session:
    """The closed session, after checking that its escrow is fully accounted for."""
    s = await market.get_session(session_id)
    assert s.closed, s
    # a dispute holds the provider's share in the contract: part of what it earned
    assert s.stake == s.provider_earned + s.user_refund
    assert s.held == (s.provider_earned if s.disputed and not s.claimed else 0)
    billed = min(s.closed_at, s.ends_at) - s.opened_at
    assert s.provider_earned == billed * s.price_per_second
    return s


def assert_paid(before: dict[str, int], after: dict[str, int], *sessions: Session,
                user: str = "user") -> None:
    """Balances moved by exactly the sessions' settlements (``before`` taken before they
    opened): the user paid what the provider earned, held shares sit in the contract, and
    nobody else's MOR moved."""
    earned = sum(s.provider_earned for s in sessions)
    held = sum(s.held for s in sessions)
    moved = {user: -earned, "provider": earned - held, "marketplace": held}
    assert {k: after[k] - before[k] for k in after} == {k: moved.get(k, 0) for k in after}
    assert sum(after.values()) == sum(before.values())


async def closed_session(market: Marketplace, session_id: str) -> Session | None:
    s = await market.get_session(session_id)
    return s if s.closed else None


async def travel(state: DevnetState, seconds: int) -> None:
    """Move chain time forward; the routers see it at their next index poll (0.5 s)."""
    rpc(state.rpc_url, "evm_increaseTime", [seconds])
    rpc(state.rpc_url, "evm_mine")
    await asyncio.sleep(1.5)


async def my_session_ids(base: str) -> set[str]:
    status, rows = await request("GET", f"{base}/blockchain/sessions")
    assert status == 200, rows
    return {row["sessionId"] for row in rows}


@asynccontextmanager
async def backend_running(backend: MockBackend, *args: str) -> AsyncIterator[None]:
    """Restart the MOCK backend with extra arguments; the original one again on exit."""
    original = backend.args
    await asyncio.to_thread(backend.stop)
    backend.args = [*original, *args]
    try:
        await asyncio.to_thread(backend.start)
        yield
    finally:
        await asyncio.to_thread(backend.stop)
        backend.args = original
        await asyncio.to_thread(backend.start)


@asynccontextmanager
async def backend_down(backend: MockBackend) -> AsyncIterator[None]:
    await asyncio.to_thread(backend.stop)
    try:
        yield
    finally:
        await asyncio.to_thread(backend.start)


@asynccontextmanager
async def raw_socket(state: DevnetState) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"ws://{state.provider_endpoint}{WS_PATH}") as ws:
        yield ws


async def exchange(ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]
                   ) -> list[dict[str, Any]]:
    """Send one frame; the frames answering it, up to and including the final one."""
    await ws.send_str(encode_frame(frame))
    frames = []
    while True:
        reply = json.loads(await ws.receive_str(timeout=10))
        assert reply.get("id") == frame.get("id"), reply
        frames.append(reply)
        if "result" in reply or "error" in reply:
            return frames


def provider_error(state: DevnetState, frames: list[dict[str, Any]], frame: dict[str, Any]
                   ) -> str:
    """The error code of a signed, request-bound error frame from the provider."""
    (reply,) = frames
    assert recover_frame_signer(reply) == state.provider_address
    assert reply["re"] == frame["nonce"]
    assert set(reply["error"]) >= {"code", "message"} and reply["error"]["message"]
    return str(reply["error"]["code"])


async def prompt_as(signer: Signer, state: DevnetState, session_id: str) -> list[bytes]:
    """``session.prompt`` straight to the provider, signed by ``signer``."""
    key = SessionKey.generate()
    async with RpcClient(state.provider_endpoint, signer, state.provider_address) as client:
        cipher = await client.cipher_for(key)
        stream = client.stream("session.prompt",
                               {"sessionId": session_id, "key": key.public_key_hex},
                               cipher=cipher,
                               payload=json.dumps({"messages": MESSAGES, "max_tokens": 4,
                                                   "stream": True}).encode())
        return [chunk async for chunk in stream]
