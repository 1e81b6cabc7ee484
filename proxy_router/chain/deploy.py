"""Deploy MorToken + Marketplace and fund accounts: shared by scripts and tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from proxy_router.chain.client import ChainClient

MOR = 10**18
DEFAULT_SUPPLY = 1_000_000_000 * MOR
DEFAULT_FUNDING = 10_000 * MOR


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    mor_token_address: str
    marketplace_address: str
    deployer: str
    fee_recipient: str
    block_number: int

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Deployment:
        return cls(**json.loads(path.read_text()))

    def env_lines(self) -> list[str]:
        return [
            f"ETH_NODE_CHAIN_ID={self.chain_id}",
            f"MARKETPLACE_ADDRESS={self.marketplace_address}",
            f"MOR_TOKEN_ADDRESS={self.mor_token_address}",
        ]


async def deploy_all(client: ChainClient, *, fee_recipient: str | None = None,
                     fund: Sequence[str] = (), fund_amount: int = DEFAULT_FUNDING,
                     initial_supply: int = DEFAULT_SUPPLY) -> Deployment:
    """Deploy both contracts from ``client``'s wallet, then send MOR to ``fund``."""
    token = await client.deploy("MorToken", initial_supply)
    assert token.contract_address is not None
    recipient = fee_recipient or client.address
    market = await client.deploy("Marketplace", token.contract_address, recipient)
    assert market.contract_address is not None
    mor = client.contract("MorToken", token.contract_address)
    for account in fund:
        if account.lower() == client.address.lower():
            continue
        await client.transact(mor, "transfer", account, fund_amount)
    return Deployment(
        chain_id=client.chain_id,
        mor_token_address=str(token.contract_address),
        marketplace_address=str(market.contract_address),
        deployer=client.address,
        fee_recipient=recipient,
        block_number=token.block_number,
    )
