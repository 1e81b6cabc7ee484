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
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError
from web3.providers.persistent import WebSocketProvider

from proxy_router.chain.client import TRANSIENT_ERRORS, ChainClient
from proxy_router.chain.errors import ChainError, ChainUnavailable
from proxy_router.chain.events import REORG, MarketEvent
from proxy_router.chain.markets import Market
from proxy_router.chain.types import (
    RECORD_TYPES,
    Bid,
    MarketRecord,
    Model,
    Provider,
    Session,
    chain_now,
    same_address,
)
from proxy_router.redact import redact_text
from proxy_router.store.db import Store

log = structlog.get_logger(__name__)

CHECKPOINT_KEY = "index.checkpoint"
RECENT_KEY = "index.recent_blocks"  # the remembered (block, hash) checkpoints, as JSON
MAX_LOG_RANGE = 5_000
REORG_MEMORY = 64  # recent (block, hash) checkpoints kept to find where a reorg forked
REORG_FALLBACK_BLOCKS = 256  # rewind this far when no remembered block survived a reorg
MAX_BACKOFF_S = 60.0
LOCAL_CHAIN_ID = 31337  # anvil / hardhat
# How nodes say an eth_getLogs range is too wide (Alchemy, Infura, QuickNode, BASE, ...).
RANGE_REFUSALS = re.compile(
    r"block range|range (is )?too (large|wide|big)|too many (results|logs|blocks)|"
    r"more than \d+ results|exceed(s|ed)? (the )?max|limited to a? ?[\d,]+|"
    r"response size|query timeout|maximum [\w ]*range", re.IGNORECASE)
RATE_LIMITS = re.compile(r"rate limit|too many requests|429|request limit|capacity",
                         re.IGNORECASE)
KINDS = ("provider", "model", "bid", "session")
# Events that change a provider's view (its stake, endpoint or active-bid count).
PROVIDER_EVENTS = {"ProviderRegistered", "ProviderDeregistered", "BidPosted", "BidDeleted",
                   "SessionOpened"}


Listener = Callable[[MarketEvent], Awaitable[None] | None]


class MarketIndex:
    def __init__(self, market: Market, store: Store, *,
                 poll_interval: float = 1.0, confirmations: int = 0,
                 start_block: int = 0, max_log_range: int = MAX_LOG_RANGE) -> None:
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
        self.max_log_range = max_log_range
        self.log_range = max_log_range
        """The ``eth_getLogs`` span asked for now: halved when a node refuses one,
        doubled back after a run of answered ones."""
        self.reorgs = 0
        self._answered = 0
        self._folded: list[tuple[int, str]] = []  # recent (checkpoint, block hash), oldest first
        self.head = 0
        self.head_timestamp = 0
        self.last_error: str | None = None
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._heads: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._updated = asyncio.Condition()

    # -- lifecycle ---------------------------------------------------------

    async def load(self) -> None:
        tables = self._tables()
        for kind, ident, data in await self.store.load_market():
            if kind in tables:
                tables[kind][ident] = RECORD_TYPES[kind].from_json(data)
        saved = await self.store.get(CHECKPOINT_KEY)
        if saved is not None:  # "block" (older stores) or "block:hash"
            number, _, block_hash = saved.partition(":")
            self.checkpoint = int(number)
            self._folded = [(self.checkpoint, block_hash)] if block_hash else []
            recent = await self.store.get(RECENT_KEY)
            with contextlib.suppress(ValueError, TypeError):
                pairs = [(int(n), str(h)) for n, h in json.loads(recent or "[]")]
                if pairs and pairs[-1] == (self.checkpoint, block_hash):
                    self._folded = pairs[-REORG_MEMORY:]

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
        failures = 0
        while True:
            try:
                await self.poll_once()
                self.last_error = None
                failures = 0
            except ChainError as exc:
                if self.last_error != str(exc):
                    log.warning("index_poll_failed", error=str(exc))
                self.last_error = str(exc)
                failures += 1
            except Exception as exc:
                log.exception("index_poll_crashed")
                self.last_error = f"{type(exc).__name__}: {exc}"
                failures += 1
            # A node that refuses (429, down) is asked less often, up to once a minute.
            wait = min(MAX_BACKOFF_S, self.poll_interval * 2 ** min(failures, 16)) \
                if failures else self.poll_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
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
        """Fold every log up to the (confirmed) head; returns the new checkpoint.

        First checks that the last folded block is still on the chain: a reorg deeper
        than ``confirmations`` rewinds the index to where the chains forked and reads
        every record, so nothing from an orphaned block stays a ghost."""
        self.head, self.head_timestamp = await self.client.head()
        if self.checkpoint < self.start_block:  # nothing folded yet
            if not await self._snapshot() and self.start_block <= 0:
                await self._find_start_block()
        await self._repair_reorg()
        target = self.head - self.confirmations
        while self.checkpoint < target:
            start = self.checkpoint + 1
            logs, end = await self._logs(start, target)
            end_hash = await self._block_hash(end)
            events = [e for e in map(self.market.decode_log, logs) if e is not None]
            records = await self._refresh(self._dirty(events), end)
            await self._commit(records, end, end_hash)
            events.extend(self.market.derived_events(events, records))
            for event in events:
                await self._notify(event)
            async with self._updated:
                self._updated.notify_all()
        return self.checkpoint

    async def _commit(self, records: list[tuple[str, MarketRecord]], block: int,
                      block_hash: str) -> None:
        """Store what was read at ``block`` and move the checkpoint there, atomically.
        A record that reads as nonexistent (an id from an orphaned block) is removed."""
        tables = self._tables()
        kept = [(kind, r) for kind, r in records if _exists(r)]
        gone = [(kind, r.id) for kind, r in records if not _exists(r)]
        folded = [*(p for p in self._folded if p[0] < block)][-(REORG_MEMORY - 1):]
        folded = [*folded, (block, block_hash)] if block_hash else []
        await self.store.save_market(
            [(kind, record.id, record.to_json()) for kind, record in kept],
            (CHECKPOINT_KEY, f"{block}:{block_hash}"), removed=gone,
            kv=[(RECENT_KEY, json.dumps(folded))])
        for kind, record in kept:
            tables[kind][record.id] = record
        for kind, ident in gone:
            tables[kind].pop(ident, None)
        self.checkpoint = block
        self._folded = folded

    async def _block_hash(self, number: int) -> str:
        block = await ChainClient._guard(self.client.w3.eth.get_block(number))
        return "0x" + bytes(block["hash"]).hex()

    async def _logs(self, start: int, target: int) -> tuple[list[Any], int]:
        """Logs from ``start`` to at most ``target``, and the block they reach.

        Asks for ``log_range`` blocks; a node refusing the range (public RPCs cap it,
        each with its own wording) halves it and asks again, and a run of answered
        requests doubles it back up to ``max_log_range``."""
        while True:
            end = min(target, start + self.log_range - 1)
            try:
                logs = await self.client.w3.eth.get_logs({
                    "address": self.contract.address, "fromBlock": start, "toBlock": end})
            except Web3RPCError as exc:
                message = str(exc)
                if RANGE_REFUSALS.search(message) and not RATE_LIMITS.search(message) \
                        and end > start:
                    self.log_range = max(1, (end - start + 1) // 2)
                    self._answered = 0
                    log.info("log_range_narrowed", blocks=self.log_range)
                    continue
                raise ChainUnavailable(redact_text(message)) from exc
            except TRANSIENT_ERRORS as exc:
                raise ChainUnavailable(redact_text(str(exc))) from exc
            self._answered += 1
            if self._answered >= 20 and self.log_range < self.max_log_range:
                self.log_range = min(self.max_log_range, self.log_range * 2)
                self._answered = 0
            return list(logs), end

    async def _snapshot(self) -> bool:
        """Start from the confirmed head, reading every live record through the
        flavour's paged views, when it offers them: a public chain's marketplace is
        years of logs old (the diamond on BASE: millions of blocks)."""
        at = max(0, self.head - self.confirmations)
        dirty = await self.market.snapshot_ids(at)
        if dirty is None:
            return False
        await self._commit(await self._refresh(dirty, at), at, await self._block_hash(at))
        log.info("index_snapshot", block=at, **{kind: len(ids) for kind, ids in dirty.items()})
        return True

    async def _find_start_block(self) -> None:
        """Never fold a real chain from block 0: start where the contract was created.

        A local dev chain (anvil's chain id) whose node keeps no old state (anvil restarted
        from a state file) is folded from 0 instead: it is short. Elsewhere the error
        stands, and names the setting that avoids the search."""
        try:
            self.start_block = await self.client.deployment_block(self.contract.address)
        except ChainError as exc:
            if self.client.chain_id != LOCAL_CHAIN_ID:
                raise
            log.warning("start_block_unknown_folding_from_0", error=str(exc))
            self.start_block = 0
        self.checkpoint = self.start_block - 1
        log.info("index_start_block", block=self.start_block)

    async def _repair_reorg(self) -> None:
        if not self._folded:
            return
        number, known = self._folded[-1]
        if number <= self.head and await self._block_hash(number) == known:
            return
        fork = await self._fork_point()
        log.warning("reorg_repaired", was=number, rewound_to=fork,
                    depth=number - fork, records=sum(len(t) for t in self._tables().values()))
        self.reorgs += 1
        dirty = {kind: set(table) for kind, table in self._tables().items()}
        if fork < self.start_block:  # back before the contract: nothing can exist there
            records = [(kind, RECORD_TYPES[kind].from_json({"id": ident}))
                       for kind, ids in dirty.items() for ident in ids]
            await self._commit(records, fork, "")
        else:
            # Read every record back at the confirmed head (recent state, which any full
            # node has): what was only in orphaned blocks reads as nonexistent and goes;
            # the fold from the fork on then re-reads whatever changed since.
            at = max(fork, self.head - self.confirmations)
            await self._commit(await self._refresh(dirty, at), fork, await self._block_hash(fork))
        await self._notify(MarketEvent(REORG, fork))

    async def _fork_point(self) -> int:
        """The newest remembered checkpoint still on the chain, or a safe distance back."""
        for number, known in reversed(self._folded[:-1]):
            if number <= self.head and await self._block_hash(number) == known:
                return number
        newest = min(self._folded[-1][0], self.head)
        return max(self.start_block - 1, newest - max(REORG_FALLBACK_BLOCKS,
                                                     2 * self.confirmations))

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


def _exists(record: MarketRecord) -> bool:
    """Whether a view read found the record (a zeroed struct means no such id)."""
    if isinstance(record, Session):
        return record.exists
    return record.created_at > 0
