"""Whole-stack fixtures: real anvil, real contracts, real routers as processes.

``devnet`` (in ``tests/conftest.py``, shared with the browser tests) runs
llama.cpp with the real SmolLM2-135M model (the paid path); ``mock_devnet`` runs
the same routers in front of a MOCK OpenAI backend that a test can stop or slow
down, for failure cases the real model cannot produce on demand. Each is torn
down with every process it started.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from proxy_router.chain.client import ChainClient
from proxy_router.chain.marketplace import Marketplace
from proxy_router.config import Settings
from proxy_router.consumer.access import token_path
from proxy_router.dev.devnet import Devnet, DevnetState
from proxy_router.dev.mock_openai import spawn_mock_openai
from proxy_router.ports import free_port
from proxy_router.process import ManagedProcess
from proxy_router.runtime import Router

pytestmark = pytest.mark.integration


@dataclass
class MockBackend:
    """A MOCK OpenAI server in its own process, so tests can kill it."""

    port: int
    args: list[str]
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> MockBackend:
        self.process = spawn_mock_openai(self.port, self.args)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@dataclass
class MockDevnet:
    state: DevnetState
    backend: MockBackend
    net: Devnet


@pytest.fixture(scope="module")
def mock_devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockDevnet]:
    backend = MockBackend(free_port(), ["--tokens", "12", "--token-delay", "0.01"]).start()
    net = Devnet(tmp_path_factory.mktemp("mock-devnet"), progress=lambda _: None)
    try:
        state = net.up(backend_url=backend.url, concurrent_slots=1,
                       extra_router_env={"FIRST_TOKEN_TIMEOUT_S": "5",
                                         "PROMPT_QUEUE_WAIT_S": "4"})
        yield MockDevnet(state, backend, net)
    finally:
        net.down()
        backend.stop()


async def market_for(state: DevnetState, key: str | None = None) -> Marketplace:
    client = await ChainClient.connect(state.rpc_url, key)
    return Marketplace(client, state.marketplace_address, state.mor_token_address)


@pytest.fixture
async def reader(devnet: DevnetState) -> AsyncIterator[Marketplace]:
    market = await market_for(devnet)
    try:
        yield market
    finally:
        await market.client.close()


async def mor_holdings(market: Marketplace, state: DevnetState) -> dict[str, int]:
    """MOR of every party the marketplace can move money between."""
    return {name: await market.mor_balance(addr) for name, addr in {
        "user": state.user_address, "provider": state.provider_address,
        "marketplace": state.marketplace_address, "fee_recipient": state.fee_recipient}.items()}


def logs_of(state: DevnetState, name: str) -> str:
    return (Path(state.root) / f"{name}.log").read_text(errors="replace")


@dataclass
class InProcessConsumer:
    """A consumer router for another wallet, running in the test's event loop."""

    router: Router
    address: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.router.bound_port}"

    @property
    def url(self) -> str:
        return self.base + "/v1"

    def auth(self) -> dict[str, str]:
        """Headers that let a request open and close sessions (the generated token)."""
        token = token_path(self.router.settings.proxy_storage_path).read_text().strip()
        return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def consumer_router(state: DevnetState, private_key: str, storage: Path,
                          **settings: object) -> AsyncIterator[InProcessConsumer]:
    """Start a consumer for ``private_key`` against ``state``'s chain; stop it on exit.

    Returns once its market index lists the devnet's model, like the devnet's own consumer.
    """
    router = await Router.create("consumer", Settings(
        eth_node_address=state.rpc_url, eth_node_chain_id=state.chain_id,
        wallet_private_key=private_key, marketplace_address=state.marketplace_address,
        mor_token_address=state.mor_token_address, web_address=f"127.0.0.1:{free_port()}",
        proxy_storage_path=storage, eth_node_polling_interval=0.5,
        eth_node_start_block=state.deploy_block,
        **{"first_token_timeout_s": 5.0, **settings}))
    try:
        await router.start()
        consumer = InProcessConsumer(router, router.client.address)
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                async with http.get(consumer.url + "/models") as resp:
                    if any(m["id"] == state.model_name for m in (await resp.json())["data"]):
                        break
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError("in-process consumer did not index the model")
        yield consumer
    finally:
        await router.stop()
