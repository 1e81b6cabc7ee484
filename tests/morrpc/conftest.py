"""Fixtures: fixed wallets, a live RpcServer on a free 127.0.0.1 port, clients, raw sockets."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy_router.morrpc import RpcClient, RpcServer, SessionKey, Signer
from proxy_router.ports import free_port, port_open
from proxy_router.process import ManagedProcess, spawn, wait_until_async

from .serve import HandlerState, register_test_methods

PROVIDER_KEY = "0x" + "11" * 32
CONSUMER_KEY = "0x" + "22" * 32
STRANGER_KEY = "0x" + "33" * 32


@pytest.fixture(scope="session")
def provider() -> Signer:
    return Signer.from_key(PROVIDER_KEY)


@pytest.fixture(scope="session")
def consumer() -> Signer:
    return Signer.from_key(CONSUMER_KEY)


@pytest.fixture(scope="session")
def stranger() -> Signer:
    return Signer.from_key(STRANGER_KEY)


class LiveServer:
    def __init__(self, server: RpcServer, state: HandlerState, port: int) -> None:
        self.server = server
        self.state = state
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"
        self.url = f"ws://127.0.0.1:{port}/mor-rpc"


@pytest.fixture
async def live(provider: Signer) -> AsyncIterator[LiveServer]:
    server = RpcServer(provider)
    state = register_test_methods(server)
    port = await server.start("127.0.0.1", 0)
    yield LiveServer(server, state, port)
    await server.stop()


@pytest.fixture
async def client(live: LiveServer, consumer: Signer,
                 provider: Signer) -> AsyncIterator[RpcClient]:
    async with RpcClient(live.endpoint, consumer, provider.address) as rpc:
        yield rpc


@pytest.fixture
def session_key() -> SessionKey:
    return SessionKey.generate()


@pytest.fixture
async def raw_ws(live: LiveServer) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A bare socket to the server, for sending hand-crafted frames."""
    async with aiohttp.ClientSession() as http, http.ws_connect(live.url) as ws:
        yield ws


async def exchange(ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> dict[str, Any]:
    """Send one frame and return the next frame received."""
    await ws.send_str(json.dumps(frame))
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


class ServerProcess:
    """The test handlers served by a separate Python process, killable with SIGKILL."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.key = key
        self.proc: ManagedProcess | None = None

    async def start(self) -> None:
        script = Path(__file__).with_name("serve.py")
        self.proc = spawn([sys.executable, str(script), "--port", str(self.port),
                           "--key", self.key], name="MOR-RPC test server")
        await wait_until_async(lambda: asyncio.to_thread(port_open, self.port), 20,
                               "MOR-RPC test server", process=self.proc)

    async def kill(self) -> None:
        """SIGKILL: the kernel resets the sockets, no close frames are sent."""
        if self.proc is not None and self.proc.running:
            await asyncio.to_thread(self.proc.kill)


@pytest.fixture
async def server_process() -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(free_port(), PROVIDER_KEY)
    await proc.start()
    yield proc
    await proc.kill()
