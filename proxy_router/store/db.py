"""SQLite state under ``PROXY_STORAGE_PATH``: what must survive a restart.

One file per router. WAL mode and one transaction per logical write, so a crash
leaves either the old or the new state, never half of it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS market (
    kind TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS consumer_sessions (
    session_id TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    bid_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    session_key TEXT NOT NULL,
    stake TEXT NOT NULL,
    opened_at INTEGER NOT NULL,
    ends_at INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    close_tx TEXT
);
CREATE TABLE IF NOT EXISTS provider_usage (
    session_id TEXT PRIMARY KEY,
    prompts INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    ttft_ms_sum INTEGER NOT NULL DEFAULT 0,
    tps_x1000_sum INTEGER NOT NULL DEFAULT 0
);
"""


_ADD_USAGE = (
    "INSERT INTO provider_usage (session_id, prompts, prompt_tokens, completion_tokens,"
    " ttft_ms_sum, tps_x1000_sum) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(session_id) DO UPDATE SET prompts = prompts + excluded.prompts,"
    " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
    " completion_tokens = completion_tokens + excluded.completion_tokens,"
    " ttft_ms_sum = ttft_ms_sum + excluded.ttft_ms_sum,"
    " tps_x1000_sum = tps_x1000_sum + excluded.tps_x1000_sum")


log = structlog.get_logger(__name__)


class Store:
    """A thin async wrapper; every public method is one atomic transaction."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._pending_usage: dict[str, list[int]] = {}
        """Usage recorded and not yet handed to the database, summed per session."""
        self._usage_writer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, directory: Path, name: str) -> Store:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.sqlite3"
        db = await aiosqlite.connect(path)
        os.chmod(path, 0o600)  # holds session keys
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.executescript(SCHEMA)
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        await self.flush_usage()
        await self._db.close()

    # -- key/value (event checkpoint) -------------------------------------

    async def get(self, key: str) -> str | None:
        async with self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def put(self, key: str, value: str) -> None:
        await self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                               (key, value))
        await self._db.commit()

    # -- market index ------------------------------------------------------

    async def save_market(self, rows: Iterable[tuple[str, str, dict[str, Any]]],
                          checkpoint: tuple[str, str] | None = None, *,
                          removed: Iterable[tuple[str, str]] = (),
                          kv: Iterable[tuple[str, str]] = ()) -> None:
        """Upsert index rows, delete ``removed`` (kind, id) rows, move the checkpoint and
        set the ``kv`` pairs, all in one transaction."""
        await self._db.executemany(
            "INSERT OR REPLACE INTO market (kind, id, data) VALUES (?, ?, ?)",
            [(kind, ident, json.dumps(data)) for kind, ident, data in rows],
        )
        await self._db.executemany("DELETE FROM market WHERE kind = ? AND id = ?",
                                   list(removed))
        pairs = [*([checkpoint] if checkpoint is not None else []), *kv]
        await self._db.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                                   pairs)
        await self._db.commit()

    async def load_market(self) -> list[tuple[str, str, dict[str, Any]]]:
        async with self._db.execute("SELECT kind, id, data FROM market") as cur:
            return [(r[0], r[1], json.loads(r[2])) async for r in cur]

    # -- consumer sessions -------------------------------------------------

    async def add_consumer_session(self, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        await self._db.execute(
            f"INSERT OR REPLACE INTO consumer_sessions ({cols}) VALUES ({marks})",
            tuple(row.values()),
        )
        await self._db.commit()

    async def consumer_sessions(self, status: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM consumer_sessions"
        args: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        async with self._db.execute(query + " ORDER BY opened_at", args) as cur:
            return [dict(r) async for r in cur]

    async def set_consumer_session_status(self, session_id: str, status: str,
                                          close_tx: str | None = None) -> None:
        await self._db.execute(
            "UPDATE consumer_sessions SET status = ?, close_tx = COALESCE(?, close_tx) "
            "WHERE session_id = ?", (status, close_tx, session_id))
        await self._db.commit()

    # -- provider usage ----------------------------------------------------

    async def record_usage(self, session_id: str, prompt_tokens: int, completion_tokens: int,
                           ttft_ms: int, tps_x1000: int) -> None:
        """Add one prompt's figures, written by a group commit (``_write_usage``): the
        prompts that end while a write is in flight are summed in memory and written
        together in one transaction, so a burst of answers costs a few round trips to the
        database thread, not two per answer, and no answer waits for the disk. ``usage``
        reads through what is not written yet. A crash loses at most the figures not yet
        written (statistics for receipts, never money)."""
        row = self._pending_usage.setdefault(session_id, [0, 0, 0, 0, 0])
        for i, value in enumerate((1, prompt_tokens, completion_tokens, ttft_ms, tps_x1000)):
            row[i] += value
        if self._usage_writer is None or self._usage_writer.done():
            self._usage_writer = asyncio.create_task(self._write_usage())

    async def _write_usage(self) -> None:
        while self._pending_usage:
            batch, self._pending_usage = self._pending_usage, {}
            try:
                await self._db.executemany(_ADD_USAGE, [(sid, *row) for sid, row in
                                                        batch.items()])
                await self._db.commit()
            except Exception:
                log.exception("usage_not_written", sessions=len(batch))

    async def flush_usage(self) -> None:
        """Every figure recorded so far written (at close)."""
        while self._usage_writer is not None and not self._usage_writer.done():
            await asyncio.shield(self._usage_writer)

    async def usage(self, session_id: str) -> dict[str, int]:
        """The session's figures, those still pending included. aiosqlite runs one
        connection's statements in order, and a connection reads its own uncommitted
        writes: a batch taken from the pending figures before this query is in what it
        reads, one taken after is still in the copy made here (no await in between)."""
        pending = list(self._pending_usage.get(session_id, (0, 0, 0, 0, 0)))
        async with self._db.execute(
            "SELECT prompts, prompt_tokens, completion_tokens, ttft_ms_sum, tps_x1000_sum "
            "FROM provider_usage WHERE session_id = ?", (session_id,)) as cur:
            row = await cur.fetchone()
        keys = ("prompts", "prompt_tokens", "completion_tokens", "ttft_ms_sum", "tps_x1000_sum")
        stored = tuple(row) if row else (0, 0, 0, 0, 0)
        return {k: int(a) + b for k, a, b in zip(keys, stored, pending, strict=True)}
