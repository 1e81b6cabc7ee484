"""Background loops that must outlive any one failure (sweepers, settlement)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


async def run_periodically(step: Callable[[], Awaitable[None]], interval_s: float,
                           name: str) -> None:
    """Call ``step`` every ``interval_s`` seconds until cancelled; log, never die."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await step()
        except Exception:
            log.exception("periodic_step_failed", loop=name)
