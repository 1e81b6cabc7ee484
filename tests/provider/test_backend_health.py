"""BackendMonitor: a healthy backend is probed at most every few seconds, a down one is
rechecked at once (it may be back), and a failed prompt marks it down immediately."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy_router.provider.backend_health import BackendMonitor
from proxy_router.provider.backend_pool import BackendPool

M = "0x" + "aa" * 32


def pool_of(backend: SimpleNamespace) -> BackendPool:
    return BackendPool(M, backend.model_name, [cast(Any, backend)], slots=1)


async def test_probes_are_cached_when_up_and_repeated_when_down() -> None:
    state = {"status": 200, "probes": 0}

    async def models(_: web.Request) -> web.Response:
        state["probes"] += 1
        return web.json_response({"data": []}, status=state["status"])

    app = web.Application()
    app.router.add_get("/v1/models", models)
    now = [0.0]
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        backend = SimpleNamespace(base_url=str(server.make_url("/v1")), model_name="m")
        monitor = BackendMonitor({M: pool_of(backend)}, http, clock=lambda: now[0])
        assert await monitor.is_up(M) and await monitor.is_up(M)
        assert state["probes"] == 1, "a fresh good answer is reused"
        state["status"] = 503
        now[0] += 6
        assert not await monitor.is_up(M)
        state["status"] = 200
        assert await monitor.is_up(M), "a down backend is rechecked at once"
        monitor.mark_down(M)
        assert state["probes"] == 3
        assert await monitor.is_up(M) and state["probes"] == 4
        health = await monitor.health()
        assert health == {"backend:m": {"ok": True, "modelId": M, "error": None}}


async def test_an_unreachable_backend_is_reported_without_its_address() -> None:
    async with aiohttp.ClientSession() as http:
        backend = SimpleNamespace(base_url="http://127.0.0.1:9/v1", model_name="m")
        monitor = BackendMonitor({M: pool_of(backend)}, http)
        assert not await monitor.is_up(M)
        (component,) = (await monitor.health()).values()
        assert component["ok"] is False and "127.0.0.1" not in str(component["error"])
