"""Shared fixtures: a real anvil chain on a free port, deployed contracts, wallets.

The chain is started once per session; each test that asks for ``chain`` runs
inside an ``evm_snapshot`` that is reverted afterwards, so tests never see one
another's state. Clients are created per test because a revert rewinds nonces.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from proxy_router.chain.client import ChainClient
from proxy_router.chain.deploy import Deployment, deploy_all
from proxy_router.chain.marketplace import Marketplace
from proxy_router.dev.anvil import Anvil, dev_address, dev_key

if TYPE_CHECKING:
    from proxy_router.dev.devnet import DevnetState

DEPLOYER, PROVIDER, USER, OTHER, FEE_RECIPIENT = 0, 1, 2, 3, 9


@pytest.fixture(scope="module")
async def market(state: DevnetState) -> AsyncIterator[Marketplace]:
    """A read-only Marketplace on the devnet of the module's own ``state`` fixture."""
    client = await ChainClient.connect(state.rpc_url)
    try:
        yield Marketplace(client, state.marketplace_address, state.mor_token_address)
    finally:
        await client.close()


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil() as chain:
        yield chain


@pytest.fixture(scope="session")
async def deployment(anvil: Anvil) -> Deployment:
    client = await ChainClient.connect(anvil.rpc_url, dev_key(DEPLOYER))
    try:
        return await deploy_all(client, fee_recipient=dev_address(FEE_RECIPIENT),
                                fund=[dev_address(i) for i in range(1, 9)])
    finally:
        await client.close()


@dataclass
class Chain:
    anvil: Anvil
    deployment: Deployment
    _clients: list[ChainClient]

    async def market(self, account: int) -> Marketplace:
        """A Marketplace handle signing as anvil dev account ``account``."""
        client = await ChainClient.connect(self.anvil.rpc_url, dev_key(account))
        self._clients.append(client)
        return Marketplace(client, self.deployment.marketplace_address,
                           self.deployment.mor_token_address)

    def increase_time(self, seconds: int) -> None:
        self.anvil.increase_time(seconds)


@asynccontextmanager
async def isolated_chain(anvil: Anvil, deployment: Deployment) -> AsyncIterator[Chain]:
    """A ``Chain`` inside an ``evm_snapshot`` that is reverted (and its clients closed) on exit."""
    snapshot = anvil.snapshot()
    state = Chain(anvil, deployment, [])
    try:
        yield state
    finally:
        for client in state._clients:
            await client.close()
        anvil.revert(snapshot)


@pytest.fixture
async def chain(anvil: Anvil, deployment: Deployment) -> AsyncIterator[Chain]:
    async with isolated_chain(anvil, deployment) as state:
        yield state


@pytest.fixture(scope="session")
def chain_factory(
    anvil: Anvil, deployment: Deployment
) -> Callable[[], AbstractAsyncContextManager[Chain]]:
    """``async with chain_factory() as chain:`` — the ``chain`` fixture, usable several times in
    one test (hypothesis examples must not share a function-scoped fixture)."""
    return lambda: isolated_chain(anvil, deployment)


@pytest.fixture(scope="session")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetState]:
    """The whole stack as processes: anvil, contracts, llama.cpp with the real
    SmolLM2-135M model, provider and consumer. One per test run, shared by the
    integration and browser tests."""
    from proxy_router.dev.devnet import Devnet

    net = Devnet(Path(tmp_path_factory.mktemp("devnet")), progress=lambda _: None)
    state = net.up()
    try:
        yield state
    finally:
        net.down()
