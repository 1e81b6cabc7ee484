"""Pick the marketplace flavour a router talks to (``MARKETPLACE_FLAVOR``)."""

from __future__ import annotations

from typing import TypeAlias

from proxy_router.chain.client import ChainClient
from proxy_router.chain.flavor import Flavor
from proxy_router.chain.marketplace import Marketplace
from proxy_router.chain.morpheus import MorpheusMarketplace

Market: TypeAlias = Marketplace | MorpheusMarketplace
FLAVORS: dict[str, type[Market]] = {"native": Marketplace, "morpheus": MorpheusMarketplace}


def open_market(client: ChainClient, flavor: Flavor, marketplace_address: str,
                mor_token_address: str) -> Market:
    """The flavour's client for the contract at ``marketplace_address`` (the diamond in
    the Morpheus flavour)."""
    return FLAVORS[flavor](client, marketplace_address, mor_token_address)
