"""Known networks: what a router should assume about a chain it is told the name of.

``NETWORK=base`` sets the chain id to check, how many blocks to wait before trusting
an event (``ETH_NODE_CONFIRMATIONS``) and how often to poll; each stays overridable by
its own variable. The RPC URL and the contract addresses are always the user's: we
ship no endpoint and no address we cannot vouch for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NetworkName = Literal["local", "arbitrum-sepolia", "arbitrum-one", "base-sepolia", "base"]


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


NETWORKS: dict[str, Network] = {n.name: n for n in (
    Network("local", 31337, confirmations=0, polling_interval_s=1.0, max_log_range=5_000,
            public=False),
    # Arbitrum: ~0.25 s blocks, so a few seconds of confirmations is many blocks.
    Network("arbitrum-sepolia", 421614, confirmations=20, polling_interval_s=2.0,
            max_log_range=10_000),
    Network("arbitrum-one", 42161, confirmations=20, polling_interval_s=2.0,
            max_log_range=10_000),
    # BASE (OP stack): 2 s blocks.
    Network("base-sepolia", 84532, confirmations=5, polling_interval_s=2.0,
            max_log_range=2_000),
    Network("base", 8453, confirmations=5, polling_interval_s=2.0, max_log_range=2_000),
)}
