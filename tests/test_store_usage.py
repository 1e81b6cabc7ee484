"""The provider's usage figures (what its receipts sum) are written by a group commit:
never lost at close, never counted twice, and read through before they are written."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy_router.store.db import Store

SESSION = "0x" + "ab" * 32


async def test_figures_are_read_through_before_they_are_written(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, "provider")
    try:
        await store.record_usage(SESSION, 10, 5, 100, 2000)
        await store.record_usage(SESSION, 7, 3, 50, 1000)
        assert await store.usage(SESSION) == {
            "prompts": 2, "prompt_tokens": 17, "completion_tokens": 8, "ttft_ms_sum": 150,
            "tps_x1000_sum": 3000}
    finally:
        await store.close()


async def test_a_stream_of_answers_is_counted_exactly_once_at_every_moment(
        tmp_path: Path) -> None:
    store = await Store.open(tmp_path, "provider")
    try:
        for n in range(1, 201):
            await store.record_usage(SESSION, 1, 2, 0, 0)
            if n % 7 == 0:  # reads land while batches are in flight and pending alike
                usage = await store.usage(SESSION)
                assert (usage["prompts"], usage["completion_tokens"]) == (n, 2 * n)
            if n % 13 == 0:
                await asyncio.sleep(0)
        assert (await store.usage(SESSION))["prompts"] == 200
    finally:
        await store.close()


async def test_what_is_recorded_is_on_disk_after_close(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, "provider")
    for _ in range(50):
        await store.record_usage(SESSION, 2, 1, 10, 10)
    await store.close()
    again = await Store.open(tmp_path, "provider")
    try:
        assert (await again.usage(SESSION))["prompt_tokens"] == 100
        assert (await again.usage("0x" + "00" * 32))["prompts"] == 0
    finally:
        await again.close()
