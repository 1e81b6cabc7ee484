"""Per-role Marketplace handles (each test runs in its own evm snapshot, see tests/conftest.py)."""

from __future__ import annotations

import pytest

from proxy_router.chain.marketplace import Marketplace

from .helpers import DEPLOYER, OTHER, PROVIDER, USER, ChainHandle, Offer, onboard


@pytest.fixture
async def owner(chain: ChainHandle) -> Marketplace:
    """The contract owner (the deployer)."""
    return await chain.market(DEPLOYER)


@pytest.fixture
async def provider(chain: ChainHandle) -> Marketplace:
    return await chain.market(PROVIDER)


@pytest.fixture
async def user(chain: ChainHandle) -> Marketplace:
    return await chain.market(USER)


@pytest.fixture
async def other(chain: ChainHandle) -> Marketplace:
    """A stranger to every session and bid of the test."""
    return await chain.market(OTHER)


@pytest.fixture
async def offer(provider: Marketplace) -> Offer:
    """PROVIDER registered, with its own fresh model and an active bid at PRICE."""
    return await onboard(provider)
