"""The consumer's real HTTP app (``ConsumerApi.app()``) over in-memory fakes of the
market index, the chain and the session manager, served by aiohttp's test server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from proxy_router.chain.types import Bid, Model, Provider, Session
from proxy_router.config import Settings
from proxy_router.consumer.access import AccessPolicy
from proxy_router.consumer.api import ConsumerApi
from proxy_router.consumer.chat import ChatService
from proxy_router.consumer.domain_errors import NoBids
from proxy_router.dev.anvil import dev_address, dev_key
from proxy_router.metrics import Metrics

USER = dev_address(2)
SESSION_ID = "0x" + "ab" * 32
SETTLEMENT = {"sessionId": SESSION_ID, "tx": "0x" + "01" * 32, "gasUsed": 120_000,
              "gasCostWei": 10**12, "stake": 6 * 10**16, "providerEarned": 10**15,
              "userRefund": 59 * 10**15, "held": 0, "disputed": False}


class FakeIndex:
    def __init__(self) -> None:
        self.market = FakeMarket()
        self.client = SimpleNamespace(chain_id=31337)
        self.models: dict[str, Model] = {}
        self.bids: dict[str, Bid] = {}
        self.providers: dict[str, Provider] = {}
        self.sessions: dict[str, Session] = {}
        self.last_error: str | None = None
        self.checkpoint = self.head = 7
        self.lag_blocks = 0
        self.head_timestamp = 0

    def active_bids(self, model_id: str | None = None) -> list[Bid]:
        return []

    def find_model(self, name: str) -> Model | None:
        return None

    def chain_now(self) -> int:
        return 0


class FakeMarket:
    flavor = "native"
    address = "0x" + "12" * 20

    async def eth_balance(self, address: str) -> int:
        return 10**18

    async def mor_balance(self, address: str) -> int:
        return 5 * 10**18


class FakeStore:
    async def consumer_sessions(self, status: str | None = None) -> list[dict[str, Any]]:
        return []


class FakeSessions:
    """Records closes; opening finds no bid (the chain is not part of these tests)."""

    def __init__(self) -> None:
        self.index = FakeIndex()
        self.market = FakeMarket()
        self.store = FakeStore()
        self.account = SimpleNamespace(address=USER)
        self.closed: list[str] = []
        self.open_count = 0

    async def close(self, session_id: str) -> dict[str, Any]:
        self.closed.append(session_id)
        return {**SETTLEMENT, "sessionId": session_id}

    async def open_for_model(self, model_id: str, duration: int) -> Any:
        raise NoBids("no active bid")


def consumer_settings(storage: Path, **overrides: Any) -> Settings:
    return Settings(wallet_private_key=SecretStr(dev_key(2)), marketplace_address="0x" + "11" * 20,
                    mor_token_address="0x" + "22" * 20, proxy_storage_path=storage,
                    **overrides)


@asynccontextmanager
async def consumer_app(storage: Path, **overrides: Any
                       ) -> AsyncIterator[tuple[TestClient[Any, Any], FakeSessions]]:
    """A test client of the consumer app configured with ``overrides`` (API_TOKEN...)."""
    sessions = FakeSessions()
    metrics = Metrics("consumer")
    chat = ChatService(cast(Any, sessions), cast(Any, sessions.index), session_duration=600,
                       failover=True, first_token_timeout=5, metrics=metrics)
    api = ConsumerApi(cast(Any, sessions), chat, metrics=metrics,
                      access=AccessPolicy.from_settings(consumer_settings(storage, **overrides)))
    async with TestClient(TestServer(api.app(), host="127.0.0.1")) as client:
        yield client, sessions


AppFactory = Callable[..., AbstractAsyncContextManager[tuple[TestClient[Any, Any],
                                                             FakeSessions]]]


@pytest.fixture
def app_factory(tmp_path: Path) -> AppFactory:
    return lambda **overrides: consumer_app(tmp_path, **overrides)
