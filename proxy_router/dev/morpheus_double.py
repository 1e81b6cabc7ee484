"""Deploy the Morpheus-Lumerin test double (``contracts/morpheus/``) with our MorToken.

The double stands in for the reference LumerinDiamond where the reference is not
available (CI, the devnet); it is configured with the values the reference takes from
its ``config_base_mainnet.json`` (see ../shared/morpheus-ref/README.md), and its funding
account (which pays providers of stake-mode sessions) holds MOR and a max allowance to
it, as ``deploy.py`` of the reference sets up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from eth_account import Account
from eth_account.signers.local import LocalAccount

from proxy_router.chain.client import ChainClient
from proxy_router.dev.anvil import dev_key

MOR = 10**18
DAY = 86_400
MAX_UINT256 = 2**256 - 1
DOUBLE_ARTIFACT = "MorpheusDiamondDouble"
FUNDING_HD_INDEX = 10  # the first anvil account not pre-funded, as the reference's deploy.py
DEFAULT_SUPPLY = 1_000_000_000 * MOR
DEFAULT_FUNDING = 1_000_000 * MOR
DEFAULT_DEV_MOR = 100_000 * MOR
FUNDING_GAS_ETH = 10**18


@dataclass(frozen=True)
class MorpheusDoubleConfig:
    """What the double is constructed with; the defaults are the reference's base-mainnet values.

    ``mor_supply`` and ``compute_emission`` replace the reference's emission pools (the double's
    notes say why): 9.5 M and 3 M MOR make stake/stipend = 9.5 M * 100 / 3 M ≈ 316.7, the
    reference's ratio on base mainnet in December 2026, so a one-hour session at 0.001 MOR/s
    needs the same 1,140 MOR of stake on both.
    """

    provider_min_stake: int = MOR // 10
    model_min_stake: int = MOR // 10
    bid_fee: int = MOR // 10
    min_price_per_second: int = 10**13
    max_price_per_second: int = 10**16
    max_session_duration: int = 7 * DAY
    mor_supply: int = 9_500_000 * MOR
    compute_emission: int = 3_000_000 * MOR


BASE_MAINNET = MorpheusDoubleConfig()


@dataclass(frozen=True)
class MorpheusDoubleDeployment:
    chain_id: int
    diamond: str
    mor: str
    funding_account: str
    deployer: str
    deploy_block: int
    """The block of the first deploy transaction (MorToken): where an index starts."""
    diamond_block: int
    config: MorpheusDoubleConfig
    funded: tuple[str, ...] = ()
    gas: dict[str, int] = field(default_factory=dict)
    """Gas used by each deploy step."""


async def deploy_morpheus_double(
    client: ChainClient,
    *,
    funding_account: LocalAccount | None = None,
    funding_amount: int = DEFAULT_FUNDING,
    fund: Sequence[str] = (),
    fund_amount: int = DEFAULT_DEV_MOR,
    initial_supply: int = DEFAULT_SUPPLY,
    config: MorpheusDoubleConfig = BASE_MAINNET,
) -> MorpheusDoubleDeployment:
    """Deploy MorToken and the double from ``client``'s wallet (which becomes their owner).

    ``funding_account`` (default: anvil HD account 10) gets ``funding_amount`` MOR, gas money
    if it has none, and approves the double for ever; each address in ``fund`` gets
    ``fund_amount`` MOR.
    """
    funding = funding_account or Account.from_key(dev_key(FUNDING_HD_INDEX))
    gas: dict[str, int] = {}

    token = await client.deploy("MorToken", initial_supply)
    assert token.contract_address is not None
    gas["MorToken"] = token.gas_used
    double = await client.deploy(
        DOUBLE_ARTIFACT, token.contract_address, funding.address, config.max_session_duration,
        config.provider_min_stake, config.model_min_stake, config.bid_fee,
        config.min_price_per_second, config.max_price_per_second, config.mor_supply,
        config.compute_emission,
    )
    assert double.contract_address is not None
    gas[DOUBLE_ARTIFACT] = double.gas_used
    diamond = str(double.contract_address)

    mor = client.contract("MorToken", token.contract_address)
    if await client.w3.eth.get_balance(funding.address) < FUNDING_GAS_ETH // 10:
        gas["ETH -> funding"] = (await client.send_value(funding.address, FUNDING_GAS_ETH)).gas_used
    gas["MOR -> funding"] = (await client.transact(mor, "transfer", funding.address,
                                                   funding_amount)).gas_used
    # The same connection, signing as the funding account.
    funder = ChainClient(client.w3, client.chain_id, funding, client.fees)
    gas["funding: approve(diamond, max)"] = (await funder.transact(
        funder.contract("MorToken", token.contract_address), "approve", diamond,
        MAX_UINT256)).gas_used

    funded = tuple(a for a in fund if a.lower() not in (client.address.lower(),
                                                        funding.address.lower()))
    for address in funded:
        await client.transact(mor, "transfer", address, fund_amount)
    return MorpheusDoubleDeployment(
        chain_id=client.chain_id,
        diamond=diamond,
        mor=str(token.contract_address),
        funding_account=funding.address,
        deployer=client.address,
        deploy_block=token.block_number,
        diamond_block=double.block_number,
        config=config,
        funded=funded,
        gas=gas,
    )
