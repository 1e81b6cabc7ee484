"""Known networks: what a router should assume about a chain it is told the name of.

``NETWORK=base`` sets the chain id to check, how many blocks to wait before trusting
an event (``ETH_NODE_CONFIRMATIONS``) and how often to poll; each stays overridable by
its own variable. The public presets are the Morpheus-Lumerin network's: they also
carry the marketplace flavour (``morpheus``), the diamond and MOR token addresses the
reference publishes, and a block to start the market index at, so that an RPC URL and
a key are all a user adds. These fill only what the user did not set, and only in the
morpheus flavour: a user's own (native) Marketplace on the same chain keeps its own.
The RPC URL is always the user's: we ship no endpoint we cannot vouch for.

Sources (facts only, nothing copied): the addresses are the reference's
``docs/get-started/networks-and-tokens.mdx`` (BASE) and
``smart-contracts/deploy/data/config_*.json`` (``lumerinProtocol`` is the diamond;
``MOR`` the token), all four at ``MorpheusAIs/Morpheus-Lumerin-Node`` 04e6c425. The
start blocks are given per network below, with how each was found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NetworkName = Literal["local", "arbitrum-sepolia", "arbitrum", "base-sepolia", "base"]
Flavor = Literal["native", "morpheus"]

NETWORK_ALIASES: dict[str, NetworkName] = {"arbitrum-one": "arbitrum"}
"""Older names still accepted for ``NETWORK``; settings store the canonical name."""


@dataclass(frozen=True, slots=True)
class Network:
    name: NetworkName
    chain_id: int
    confirmations: int
    """Blocks behind the head the index folds to: an L2 reorg deeper than this is
    repaired, not trusted (the sequencer's soft confirmations can be reordered)."""
    polling_interval_s: float
    max_log_range: int
    """The widest ``eth_getLogs`` asked for first; narrowed when a node refuses."""
    public: bool = True
    flavor: Flavor = "native"
    """The marketplace contract this network's preset speaks to."""
    diamond_address: str | None = None
    """The Morpheus-Lumerin diamond (the marketplace of the morpheus flavour)."""
    mor_token_address: str | None = None
    start_block: int | None = None
    """At or before the diamond's deployment: where an empty market index starts."""


NETWORKS: dict[str, Network] = {n.name: n for n in (
    Network("local", 31337, confirmations=0, polling_interval_s=1.0, max_log_range=5_000,
            public=False),
    # Arbitrum: ~0.25 s blocks, so a few seconds of confirmations is many blocks.
    # Start blocks: the diamond's `providerRegistryStartBlock` in Morpheus's own subgraph
    # (MorpheusAIs/MORLumerinSubgraph, config/arbitrum-*.json at d3e253f, 2024-12-30),
    # which indexes the diamond's events from there.
    Network("arbitrum-sepolia", 421614, confirmations=20, polling_interval_s=2.0,
            max_log_range=10_000, flavor="morpheus",
            diamond_address="0xb8C55cD613af947E73E262F0d3C54b7211Af16CF",
            mor_token_address="0x34a285A1B1C166420Df5b6630132542923B5b27E",
            start_block=96_950_200),
    Network("arbitrum", 42161, confirmations=20, polling_interval_s=2.0,
            max_log_range=10_000, flavor="morpheus",
            diamond_address="0xDE819AaEE474626E3f34Ef0263373357e5a6C71b",
            mor_token_address="0x092bAaDB7DEf4C3981454dD9c0A0D7FF07bCFc86",
            start_block=275_843_800),
    # BASE (OP stack): 2 s blocks, so block = (unix time - genesis time) / 2 exactly
    # (genesis l2_time: 1686789347 on BASE, 1695768288 on BASE Sepolia). No deployment
    # block is published for the BASE diamonds, so the start blocks are lower bounds
    # taken from dates: the reference first supports BASE chain ids in f9ea516e
    # (2025-10-20T15:19:06Z, "add public urls for base chain ids"); Morpheus's provider
    # dashboard (MorpheusAIs/Morpheus-MyProvider) lists the Sepolia diamond on
    # 2025-11-17 (9aded0c) and the mainnet one as "TODO" until 3265c6b (2025-12-17),
    # the day the reference publishes it (6cc28967). Each block is the first date less
    # 14 days (2025-10-06): on an empty store that costs at most about 920 (Sepolia)
    # and 1,560 (mainnet) empty eth_getLogs ranges more than the exact block, and misses
    # nothing unless a diamond predates its own router's BASE support by two weeks.
    Network("base-sepolia", 84532, confirmations=5, polling_interval_s=2.0,
            max_log_range=2_000, flavor="morpheus",
            diamond_address="0x6e4d0B775E3C3b02683A6F277Ac80240C4aFF930",
            mor_token_address="0x5C80Ddd187054E1E4aBBfFCD750498e81d34FfA3",
            start_block=31_990_000),
    Network("base", 8453, confirmations=5, polling_interval_s=2.0, max_log_range=2_000,
            flavor="morpheus",
            diamond_address="0x6aBE1d282f72B474E54527D93b979A4f64d3030a",
            mor_token_address="0x7431aDa8a591C955a994a21710752EF9b882b8e3",
            start_block=36_480_000),
)}
NETWORKS.update({alias: NETWORKS[name] for alias, name in NETWORK_ALIASES.items()})


def network_of_diamond(address: str) -> Network | None:
    """The preset whose diamond this is, so a reference ``.env`` (which names the
    diamond but not a network) gets its chain's confirmations, polling and start."""
    wanted = address.lower()
    return next((n for n in NETWORKS.values()
                 if n.diamond_address is not None and n.diamond_address.lower() == wanted),
                None)
