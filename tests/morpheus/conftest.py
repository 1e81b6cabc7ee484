"""A Morpheus-Lumerin marketplace per kind: ``double`` (ours, always) and ``reference``
(the reference's own contracts, when ``MORPHEUS_SRC`` names a checkout of it:
``make test-morpheus``). Each kind gets its own anvil; every test runs inside an
``evm_snapshot`` reverted afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from proxy_router.chain.client import ChainClient
from proxy_router.chain.morpheus import MorpheusMarketplace
from proxy_router.dev.anvil import Anvil, dev_key
from proxy_router.dev.morpheus_net import MorpheusNet, deploy, reference_available

KINDS = ["double", "reference"]


@pytest.fixture(scope="session", params=KINDS)
def morpheus_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "reference" and (why := reference_available()):
        pytest.skip(f"Morpheus reference deployment NOT tested: {why}; "
                    "run `make test-morpheus` with MORPHEUS_SRC set")
    return kind


@pytest.fixture(scope="session")
def morpheus_anvil(morpheus_kind: str) -> Iterator[Anvil]:
    with Anvil() as chain:
        yield chain


@pytest.fixture(scope="session")
async def morpheus_net(morpheus_kind: str, morpheus_anvil: Anvil) -> MorpheusNet:
    return await deploy(morpheus_kind, morpheus_anvil.rpc_url)  # type: ignore[arg-type]


@dataclass
class Diamond:
    """Handles on the deployment, signing as anvil dev accounts."""

    net: MorpheusNet
    anvil: Anvil
    _clients: list[ChainClient] = field(default_factory=list)

    async def market(self, account: int) -> MorpheusMarketplace:
        client = await ChainClient.connect(self.net.rpc_url, dev_key(account))
        self._clients.append(client)
        return MorpheusMarketplace(client, self.net.diamond, self.net.mor)

    def increase_time(self, seconds: int) -> None:
        self.anvil.increase_time(seconds)

    async def now(self) -> int:
        client = self._clients[0] if self._clients else await ChainClient.connect(
            self.net.rpc_url)
        return (await client.head())[1]


@pytest.fixture
async def diamond(morpheus_net: MorpheusNet, morpheus_anvil: Anvil) -> AsyncIterator[Diamond]:
    snapshot = morpheus_anvil.snapshot()
    handle = Diamond(morpheus_net, morpheus_anvil)
    try:
        yield handle
    finally:
        for client in handle._clients:
            await client.close()
        morpheus_anvil.revert(snapshot)
