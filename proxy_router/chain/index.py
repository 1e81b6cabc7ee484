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
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from eth_utils import to_checksum_address
from web3 import AsyncWeb3
from web3.providers.persistent import WebSocketProvider

from proxy_router.chain.artifacts import event_topics
from proxy_router.chain.client import ChainClient
from proxy_router.chain.errors import ChainError
from proxy_router.store.db import Store

log = structlog.get_logger(__name__)

CHECKPOINT_KEY = "index.checkpoint"
MAX_LOG_RANGE = 5_000
KINDS = ("provider", "model", "bid", "session")
# Events that change a provider's view (its stake, endpoint or active-bid count).
PROVIDER_EVENTS = {"ProviderRegistered", "ProviderDeregistered", "BidPosted", "BidDeleted",
                   "SessionOpened"}

Listener = Callable[[str, dict[str, Any]], Awaitable[None] | None]


def jsonable(value: Any) -> Any:
    """Struct values as JSON: bytes → 0x-hex, tuples/dicts recursively."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if hasattr(value, "_asdict"):
        return {k: jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


class MarketIndex:
    def __init__(self, client: ChainClient, marketplace_address: str, store: Store, *,
                 poll_interval: float = 1.0, confirmations: int = 0,
                 start_block: int = 0) -> None:
        self.client = client
        self.contract = client.contract("Marketplace", marketplace_address)
        self.store = store
        self.poll_interval = poll_interval
        self.confirmations = confirmations
        self.start_block = start_block
        self.providers: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.bids: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
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
                tables[kind][ident] = data
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
        """``listener(event_name, args)`` runs for every new Marketplace event."""
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
            dirty: dict[str, set[str]] = {kind: set() for kind in KINDS}
            events: list[tuple[str, dict[str, Any]]] = []
            for raw in logs:
                name = self._topics.get(bytes(raw["topics"][0])) if raw["topics"] else None
                if name is None:
                    continue
                args = dict(getattr(self.contract.events, name)().process_log(raw)["args"])
                events.append((name, jsonable(args)))
                self._mark(name, args, dirty)
            rows = await self._refresh(dirty, end)
            await self.store.save_market(rows, (CHECKPOINT_KEY, str(end)))
            tables = self._tables()
            for kind, ident, data in rows:
                tables[kind][ident] = data
            self.checkpoint = end
            for name, args in events:
                await self._notify(name, args)
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
    def _mark(name: str, args: dict[str, Any], dirty: dict[str, set[str]]) -> None:
        if name in PROVIDER_EVENTS:
            dirty["provider"].add(to_checksum_address(args["provider"]))
        if "modelId" in args:
            dirty["model"].add(_hex(args["modelId"]))
        if "bidId" in args:
            dirty["bid"].add(_hex(args["bidId"]))
        if "sessionId" in args:
            dirty["session"].add(_hex(args["sessionId"]))

    async def _refresh(self, dirty: dict[str, set[str]],
                       block: int) -> list[tuple[str, str, dict[str, Any]]]:
        views = {"provider": "getProvider", "model": "getModel", "bid": "getBid",
                 "session": "getSession"}
        jobs = [(kind, ident) for kind in KINDS for ident in sorted(dirty[kind])]
        sem = asyncio.Semaphore(16)

        async def fetch(kind: str, ident: str) -> tuple[str, str, dict[str, Any]]:
            arg: Any = ident if kind == "provider" else bytes.fromhex(ident[2:])
            async with sem:
                value = await self.client.call(self.contract, views[kind], arg, block=block)
            data = jsonable(value)
            data["id"] = ident
            return kind, ident, data

        return list(await asyncio.gather(*(fetch(k, i) for k, i in jobs)))

    async def _notify(self, name: str, args: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                result = listener(name, args)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("index_listener_failed", event=name)

    def _tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {"provider": self.providers, "model": self.models, "bid": self.bids,
                "session": self.sessions}

    # -- queries -----------------------------------------------------------

    def active_bids(self, model_id: str | None = None) -> list[dict[str, Any]]:
        return [b for b in self.bids.values()
                if not b.get("deletedAt") and (model_id is None
                                               or b["modelId"].lower() == model_id.lower())]

    def find_model(self, name_or_id: str) -> dict[str, Any] | None:
        """A model by on-chain id (0x-hex) or by name (the newest active one wins)."""
        if name_or_id.lower() in self.models:
            return self.models[name_or_id.lower()]
        named = [m for m in self.models.values()
                 if m.get("name") == name_or_id and not m.get("isDeleted")]
        return max(named, key=lambda m: m.get("createdAt", 0)) if named else None

    @property
    def lag_blocks(self) -> int:
        return max(0, self.head - self.checkpoint)
