"""The market as the routers see it: providers, models, bids and sessions.

Folded from the Marketplace's events (``eth_getLogs`` polling from a persisted
checkpoint): each event marks an id dirty, and the current state of every dirty
id is read back through the contract's views at the same block. Reading the
view rather than replaying event arguments keeps the fold correct when a bid
replaces another or a session is settled, with no duplicated contract logic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from web3 import AsyncWeb3
from web3.providers.persistent import WebSocketProvider

from proxy_router.chain.artifacts import event_topics
from proxy_router.chain.client import ChainClient
from proxy_router.chain.errors import ChainError
from proxy_router.chain.marketplace import Marketplace
from proxy_router.chain.types import (
    RECORD_TYPES,
    Bid,
    MarketRecord,
    Model,
    Provider,
    Session,
    chain_now,
    normalize_address,
    normalize_id,
    same_address,
)
from proxy_router.store.db import Store

log = structlog.get_logger(__name__)

CHECKPOINT_KEY = "index.checkpoint"
MAX_LOG_RANGE = 5_000
KINDS = ("provider", "model", "bid", "session")
# Events that change a provider's view (its stake, endpoint or active-bid count).
PROVIDER_EVENTS = {"ProviderRegistered", "ProviderDeregistered", "BidPosted", "BidDeleted",
                   "SessionOpened"}


@dataclass(frozen=True, slots=True)
class MarketEvent:
    """A marketplace event: the ids it concerns (normalised as in ``types``) and, for
    settlements and claims, the amounts it moved."""

    name: str
    block: int
    provider: str | None = None
    user: str | None = None
    model_id: str | None = None
    bid_id: str | None = None
    session_id: str | None = None
    amount: int = 0  # ProviderClaimed
    provider_earned: int = 0  # SessionSettled, as the next three
    user_refund: int = 0
    held: int = 0
    disputed: bool = False

    @classmethod
    def from_args(cls, name: str, block: int, args: dict[str, Any]) -> MarketEvent:
        def addr(key: str) -> str | None:
            return normalize_address(args[key]) if key in args else None

        def ident(key: str) -> str | None:
            return normalize_id(args[key]) if key in args else None
        return cls(name, block, provider=addr("provider"), user=addr("user"),
                   model_id=ident("modelId"), bid_id=ident("bidId"),
                   session_id=ident("sessionId"), amount=int(args.get("amount", 0)),
                   provider_earned=int(args.get("providerEarned", 0)),
                   user_refund=int(args.get("userRefund", 0)), held=int(args.get("held", 0)),
                   disputed=bool(args.get("disputed", False)))


Listener = Callable[[MarketEvent], Awaitable[None] | None]


class MarketIndex:
    def __init__(self, market: Marketplace, store: Store, *,
                 poll_interval: float = 1.0, confirmations: int = 0,
                 start_block: int = 0) -> None:
        self.market = market
        self.client = market.client
        self.contract = market.contract
        self.store = store
        self.poll_interval = poll_interval
        self.confirmations = confirmations
        self.start_block = start_block
        self.providers: dict[str, Provider] = {}  # by checksummed address
        self.models: dict[str, Model] = {}  # by lower-case 0x id, as bids and sessions
        self.bids: dict[str, Bid] = {}
        self.sessions: dict[str, Session] = {}
        self.checkpoint = start_block - 1
        self.head = 0
        self.head_timestamp = 0
        self.last_error: str | None = None
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._heads: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._updated = asyncio.Condition()
        self._topics = {topic: name for topic, name in event_topics("Marketplace").items()}

    # -- lifecycle ---------------------------------------------------------

    async def load(self) -> None:
        tables = self._tables()
        for kind, ident, data in await self.store.load_market():
            if kind in tables:
                tables[kind][ident] = RECORD_TYPES[kind].from_json(data)
        saved = await self.store.get(CHECKPOINT_KEY)
        if saved is not None:
            self.checkpoint = int(saved)

    async def start(self) -> None:
        await self.load()
        with contextlib.suppress(ChainError):
            await self.poll_once()
        self._task = asyncio.create_task(self._run(), name="market-index")
        if self.client.ws_url:
            self._heads = asyncio.create_task(self._follow_heads(self.client.ws_url),
                                              name="market-index-heads")

    async def stop(self) -> None:
        for task in (self._task, self._heads):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._heads = None

    def subscribe(self, listener: Listener) -> None:
        """``listener(event)`` runs for every new Marketplace event, once it is folded."""
        self._listeners.append(listener)

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
                self.last_error = None
            except ChainError as exc:
                if self.last_error != str(exc):
                    log.warning("index_poll_failed", error=str(exc))
                self.last_error = str(exc)
            except Exception as exc:
                log.exception("index_poll_crashed")
                self.last_error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    async def _follow_heads(self, url: str) -> None:
        """Wake the poller on every new block (ws:// URLs): lower latency than the
        polling interval, while ``eth_getLogs`` from the checkpoint stays the one
        source of truth, so a dropped subscription can never lose an event."""
        while True:
            try:
                async with AsyncWeb3(WebSocketProvider(url)) as w3:
                    await w3.eth.subscribe("newHeads")
                    async for _ in w3.socket.process_subscriptions():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("head_subscription_lost", error=str(exc))
            await asyncio.sleep(max(1.0, self.poll_interval))

    # -- folding -----------------------------------------------------------

    async def poll_once(self) -> int:
        """Fold every log up to the (confirmed) head; returns the new checkpoint."""
        w3 = self.client.w3
        head = await ChainClient._guard(w3.eth.get_block("latest"))
        self.head = int(head["number"])
        self.head_timestamp = int(head["timestamp"])
        target = self.head - self.confirmations
        while self.checkpoint < target:
            start = self.checkpoint + 1
            end = min(target, start + MAX_LOG_RANGE - 1)
            logs = await ChainClient._guard(w3.eth.get_logs({
                "address": self.contract.address, "fromBlock": start, "toBlock": end}))
            events: list[MarketEvent] = []
            for raw in logs:
                name = self._topics.get(bytes(raw["topics"][0])) if raw["topics"] else None
                if name is None:
                    continue
                args = dict(getattr(self.contract.events, name)().process_log(raw)["args"])
                events.append(MarketEvent.from_args(name, int(raw["blockNumber"]), args))
            records = await self._refresh(self._dirty(events), end)
            await self.store.save_market(
                [(kind, record.id, record.to_json()) for kind, record in records],
                (CHECKPOINT_KEY, str(end)))
            tables = self._tables()
            for kind, record in records:
                tables[kind][record.id] = record
            self.checkpoint = end
            for event in events:
                await self._notify(event)
            async with self._updated:
                self._updated.notify_all()
        return self.checkpoint

    async def wait_for_block(self, block: int, timeout: float = 10.0) -> None:
        """Wait until the index has folded ``block`` (e.g. a just-mined tx)."""
        async def reached() -> None:
            async with self._updated:
                await self._updated.wait_for(lambda: self.checkpoint >= block)
        if self.checkpoint >= block:
            return
        await asyncio.wait_for(reached(), timeout)

    @staticmethod
    def _dirty(events: Iterable[MarketEvent]) -> dict[str, set[str]]:
        dirty: dict[str, set[str]] = {kind: set() for kind in KINDS}
        for event in events:
            if event.name in PROVIDER_EVENTS and event.provider:
                dirty["provider"].add(event.provider)
            for kind, ident in (("model", event.model_id), ("bid", event.bid_id),
                                ("session", event.session_id)):
                if ident:
                    dirty[kind].add(ident)
        return dirty

    async def _refresh(self, dirty: dict[str, set[str]],
                       block: int) -> list[tuple[str, MarketRecord]]:
        views: dict[str, Callable[..., Awaitable[MarketRecord]]] = {
            "provider": self.market.get_provider, "model": self.market.get_model,
            "bid": self.market.get_bid, "session": self.market.get_session}
        jobs = [(kind, ident) for kind in KINDS for ident in sorted(dirty[kind])]
        sem = asyncio.Semaphore(16)

        async def fetch(kind: str, ident: str) -> tuple[str, MarketRecord]:
            async with sem:
                return kind, await views[kind](ident, block=block)

        return list(await asyncio.gather(*(fetch(k, i) for k, i in jobs)))

    async def _notify(self, event: MarketEvent) -> None:
        for listener in self._listeners:
            try:
                result = listener(event)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("index_listener_failed", event=event.name)

    def _tables(self) -> dict[str, dict[str, Any]]:
        return {"provider": self.providers, "model": self.models, "bid": self.bids,
                "session": self.sessions}

    # -- queries -----------------------------------------------------------

    def chain_now(self) -> int:
        """Now, for deadlines: see ``types.chain_now``."""
        return chain_now(self.head_timestamp)

    def active_bids(self, model_id: str | None = None) -> list[Bid]:
        return [b for b in self.bids.values()
                if b.active and (model_id is None or b.model_id == model_id.lower())]

    def find_model(self, name_or_id: str) -> Model | None:
        """A model by on-chain id (0x-hex) or by name (the newest active one wins)."""
        if name_or_id.lower() in self.models:
            return self.models[name_or_id.lower()]
        named = [m for m in self.models.values() if m.name == name_or_id and not m.is_deleted]
        return max(named, key=lambda m: m.created_at) if named else None

    def provider(self, address: str) -> Provider | None:
        """A provider by address, in any letter case."""
        found = self.providers.get(address)
        if found is None:
            found = next((p for a, p in self.providers.items() if same_address(a, address)),
                         None)
        return found

    @property
    def lag_blocks(self) -> int:
        return max(0, self.head - self.checkpoint)
