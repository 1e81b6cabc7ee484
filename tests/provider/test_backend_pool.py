"""Several backends behind one model (``BackendPool``), and no hidden connection caps.

Read as the specification: a prompt goes to the healthy backend with the most free
slots (ties in turn); a backend that fails (connection, 5xx) is taken out and comes
back when its probe answers; a failure before the first token is retried once on
another backend, a failure mid-stream is not; a prompt's token counts ask the backend
that ran it; every backend has its own metrics, labelled host:port; the backend pool
is sized from the models' slots and a full pool is counted and logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from proxy_router.dev.mock_openai import MockOpenAIOptions, MockOpenAIServer
from proxy_router.metrics import Metrics
from proxy_router.morrpc import RpcError
from proxy_router.provider.backend_pool import (
    BackendPool,
    backend_connection_limits,
    backend_label,
    backend_session,
)
from proxy_router.provider.models_config import ModelsConfig
from proxy_router.provider.service import ProviderService
from proxy_router.store.db import Store
from tests.provider.test_service import (
    MESSAGES,
    MODEL,
    PROVIDER,
    SESSION,
    USER,
    FakeIndex,
    FakeMarket,
    a_session,
)
from tests.provider.test_usage_exact import LlamaLike

BOUND_S = 10.0  # a bound for waits, never a timing assertion


async def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.01)


def fake(url: str) -> Any:
    return SimpleNamespace(base_url=url, model_name="m")


def pool_of(*urls: str, slots: int = 2, metrics: Metrics | None = None) -> BackendPool:
    return BackendPool(MODEL, "served", [fake(u) for u in urls], slots=slots, metrics=metrics)


def labels_of(pool: BackendPool, n: int) -> list[str]:
    """The backends of ``n`` prompts that run together."""
    got = []
    leases = [pool.lease() for _ in range(n)]
    for lease in leases:
        got.append(lease.__enter__().member.label)
    for lease in reversed(leases):
        lease.__exit__(None, None, None)
    return got


# -- sizing ----------------------------------------------------------------------------------


def models(*entries: dict[str, Any]) -> ModelsConfig:
    return ModelsConfig.model_validate({"models": [
        {"modelId": f"0x{i + 1:064x}", "modelName": f"m{i}", **e}
        for i, e in enumerate(entries)]})


def test_the_backend_pool_is_sized_from_every_backends_slots() -> None:
    cfg = models({"apiUrl": ["http://gpu1:8000/v1", "http://gpu2:8000/v1"],
                  "concurrentSlots": 200},
                 {"apiUrl": "http://gpu1:8000/v1", "concurrentSlots": 8, "modelType": "embedding"})
    limit, per_host = backend_connection_limits(cfg)
    # each backend: 2 connections a slot (the stream, then its two counts) + 2 (probes)
    assert limit == (2 * 200 + 2) * 2 + (2 * 8 + 2)
    assert per_host == (2 * 200 + 2) + (2 * 8 + 2), "gpu1 serves both models"
    assert limit > 100, "aiohttp's default cap is gone"


async def test_the_backend_session_carries_those_limits() -> None:
    cfg = models({"apiUrl": "http://a:1/v1", "concurrentSlots": 300})
    async with backend_session(cfg) as http:
        connector = cast(aiohttp.TCPConnector, http.connector)
        assert (connector.limit, connector.limit_per_host) == (602, 602)


def test_a_config_serving_nothing_still_gets_a_bounded_pool() -> None:
    assert backend_connection_limits(ModelsConfig(models=[])) == (1, 1)


def test_labels_name_host_and_port_only() -> None:
    assert backend_label("https://user:secret@gpu.example:8443/v1/KEY?api_key=k") \
        == "gpu.example:8443"
    assert backend_label("https://gpu.example/v1") == "gpu.example:443"
    assert backend_label("http://[::1]:8080/v1") == "[::1]:8080"
    pool = pool_of("http://h:1/a/v1", "http://h:1/b/v1")
    assert [m.label for m in pool.members] == ["h:1", "h:1#2"], "told apart, still no path"


# -- balancing -------------------------------------------------------------------------------


def test_each_prompt_goes_to_the_backend_with_the_most_free_slots() -> None:
    pool = pool_of("http://a:1/v1", "http://b:1/v1", slots=4)
    a, b = pool.members
    with pool.lease() as first:
        assert first.member is a, "a tie goes in turn, from the first"
        with pool.lease() as second:
            assert second.member is b, "b has more free slots"
            with pool.lease() as third, pool.lease() as fourth:
                assert {third.member.label, fourth.member.label} == {"a:1", "b:1"}
                assert (a.in_flight, b.in_flight) == (2, 2)
    assert (a.in_flight, b.in_flight) == (0, 0), "a lease frees its slot"


def test_ties_go_round_robin() -> None:
    pool = pool_of("http://a:1/v1", "http://b:1/v1", "http://c:1/v1")
    served = []
    for _ in range(6):
        with pool.lease() as lease:
            served.append(lease.member.label)
    assert served == ["a:1", "b:1", "c:1"] * 2


def test_a_down_backend_gets_nothing_while_another_is_up() -> None:
    pool = pool_of("http://a:1/v1", "http://b:1/v1", slots=1)
    pool.set_status(pool.members[0], "unreachable")
    assert labels_of(pool, 4) == ["b:1"] * 4, "even past b's slots: a is out"
    pool.set_status(pool.members[1], "unreachable")
    assert len(labels_of(pool, 2)) == 2, "all down: still tried (one may be back)"
    pool.set_status(pool.members[0], None)
    assert labels_of(pool, 3) == ["a:1"] * 3


# -- a provider with two backends --------------------------------------------------------------


@dataclass
class CountingLlama(LlamaLike):
    """llama-cpp-python-like, counting its tokenizer calls too."""

    counts: list[str] = field(default_factory=list)

    async def _count(self, request: web.Request) -> web.Response:
        self.counts.append((await request.json())["input"])
        return await super()._count(request)


Make = Callable[..., Any]


@pytest.fixture
async def provider_with(http: aiohttp.ClientSession, tmp_path: Path
                        ) -> AsyncIterator[Make]:
    made: list[tuple[ProviderService, Store]] = []

    async def make(*urls: str, slots: int = 1) -> ProviderService:
        market = FakeMarket()
        market.sessions[SESSION] = a_session()
        store = await Store.open(tmp_path / str(len(made)), "provider")
        cfg = ModelsConfig.model_validate({"models": [
            {"modelId": MODEL, "modelName": "served", "apiUrl": list(urls),
             "concurrentSlots": slots}]})
        service = ProviderService(
            account=PROVIDER.account, market=cast(Any, market), index=cast(Any, FakeIndex()),
            models=cfg, backend_urls={MODEL: list(urls)}, store=store, http=http,
            metrics=Metrics("provider"))
        service.health.recover_interval_s = 0.02
        made.append((service, store))
        return service

    yield make
    for service, store in made:
        await service.close()
        await store.close()


@pytest.fixture
async def mocks() -> AsyncIterator[list[MockOpenAIServer]]:
    servers = [MockOpenAIServer(MockOpenAIOptions(tokens=5)) for _ in range(2)]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


async def ask(service: ProviderService, **body: Any) -> list[Any]:
    return [item async for item in service.prompt(
        SESSION, USER.address, {"messages": MESSAGES, **body}, trailer={})]


def sample(service: ProviderService, name: str, **labels: str) -> float:
    value = service.metrics.registry.get_sample_value(name, {"model": "served", **labels})
    return value or 0.0


def label(server: MockOpenAIServer | LlamaLike) -> str:
    return backend_label(server.base_url if isinstance(server, MockOpenAIServer) else server.url)


async def test_the_models_capacity_is_slots_times_backends(provider_with: Make) -> None:
    service = await provider_with("http://a:1/v1", "http://b:1/v1", "http://c:1/v1", slots=4)
    assert service.capacity.slots(MODEL) == 12
    assert service.models.slots_by_model() == {MODEL: 12}
    caps = await service.capabilities({}, cast(Any, None))
    assert caps["models"][0]["slots"] == 12


async def test_a_prompts_token_counts_ask_the_backend_that_ran_it(provider_with: Make) -> None:
    servers = [CountingLlama(), CountingLlama()]
    runners = [await s.start() for s in servers]
    try:
        service = await provider_with(*(s.url for s in servers))
        for _ in range(2):
            await ask(service, stream=True)
    finally:
        for runner in runners:
            await runner.cleanup()
    for server in servers:  # each ran one prompt: its stream, then its own counts
        assert [r.get("stream") for r in server.requests] == [True, False]
        assert server.requests[1]["max_tokens"] == 1, "the prompt count's probe"
        assert server.counts[-1] != "", "the completion counted by the same tokenizer"


async def test_a_failure_before_the_first_token_is_retried_on_another_backend(
        provider_with: Make, mocks: list[MockOpenAIServer]) -> None:
    bad, good = mocks
    bad.options.mode = "fail"  # HTTP 500 (its GET /models still answers)
    service = await provider_with(bad.base_url, good.base_url)
    service.health.recover_interval_s = 3600.0  # no probe puts it back during this test
    items = await ask(service, stream=True)
    assert items and (bad.requests_seen, good.requests_seen) == (1, 1)
    whole = await ask(service, stream=False)
    assert whole[0]["object"] == "chat.completion"
    assert (bad.requests_seen, good.requests_seen) == (1, 2), "the failed backend is out"
    assert sample(service, "proxy_router_backend_failures_total",
                  backend=label(bad), reason="error") == 1
    assert sample(service, "proxy_router_backend_up", backend=label(bad)) == 0
    assert sample(service, "proxy_router_backend_up", backend=label(good)) == 1
    assert sample(service, "proxy_router_backend_requests_total", backend=label(good)) == 2


async def test_a_failure_mid_stream_is_not_retried(
        provider_with: Make, mocks: list[MockOpenAIServer]) -> None:
    dropping, other = mocks
    dropping.options.mode = "drop"  # cut after 3 chunks
    service = await provider_with(dropping.base_url, other.base_url)
    got: list[Any] = []
    with pytest.raises(RpcError):
        async for item in service.prompt(SESSION, USER.address,
                                         {"messages": MESSAGES, "stream": True}):
            got.append(item)
    assert got, "tokens had reached the client"
    assert other.requests_seen == 0
    assert sample(service, "proxy_router_backend_failures_total",
                  backend=label(dropping), reason="broken") == 1


async def test_the_retry_is_once_and_a_last_failure_is_the_prompts(
        provider_with: Make, mocks: list[MockOpenAIServer]) -> None:
    for server in mocks:
        server.options.mode = "fail"
    service = await provider_with(*(m.base_url for m in mocks))
    with pytest.raises(RpcError):
        await ask(service, stream=True)
    assert [m.requests_seen for m in mocks] == [1, 1]


async def test_a_backend_taken_out_comes_back_when_its_probe_answers(
        provider_with: Make, mocks: list[MockOpenAIServer]) -> None:
    gone, other = mocks
    port = gone.port
    await gone.stop()  # connection refused
    service = await provider_with(gone.base_url, other.base_url)
    first = service.backends[MODEL].members[0]
    await ask(service, stream=True)
    assert not first.up and other.requests_seen == 1
    assert sample(service, "proxy_router_backend_failures_total",
                  backend=label(gone), reason="unavailable") == 1
    assert await service.health.is_up(MODEL), "the model is up while one backend is"

    back = MockOpenAIServer(MockOpenAIOptions(tokens=5), port=port)
    await back.start()
    try:
        await eventually(lambda: first.up, "the recovery probe puts it back")
        assert sample(service, "proxy_router_backend_up", backend=label(back)) == 1
        await ask(service, stream=True)
        await ask(service, stream=True)
        assert back.requests_seen >= 1, "it takes prompts again"
    finally:
        await back.stop()


async def test_in_flight_prompts_are_a_gauge_per_backend(provider_with: Make) -> None:
    service = await provider_with("http://a:1/v1", "http://b:1/v1", slots=2)
    pool = service.backends[MODEL]
    with pool.lease(), pool.lease(), pool.lease():
        assert sample(service, "proxy_router_backend_in_flight", backend="a:1") == 2
        assert sample(service, "proxy_router_backend_in_flight", backend="b:1") == 1
    assert sample(service, "proxy_router_backend_in_flight", backend="a:1") == 0
    assert sample(service, "proxy_router_backend_requests_total", backend="a:1") == 2


async def test_health_counts_the_backends_up_without_naming_them(
        provider_with: Make, mocks: list[MockOpenAIServer]) -> None:
    service = await provider_with(mocks[0].base_url, "http://127.0.0.1:9/v1")
    (component,) = (await service.backend_health()).values()
    assert component["ok"] is True
    assert (component["backends"], component["backendsUp"]) == (2, 1)
    assert "127.0.0.1" not in str(component)


# -- waits for a pooled connection -----------------------------------------------------------


async def test_a_request_that_waits_for_a_pooled_connection_is_counted_and_logged() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        started.set()
        await release.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/k/secret", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/k/secret"
    metrics = Metrics("provider")
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1),
                trace_configs=[metrics.pool_trace("backend")]) as http:

            async def get() -> str:
                async with http.get(url) as resp:
                    return await resp.text()

            with capture_logs() as logs:
                first = asyncio.create_task(get())
                await started.wait()
                second = asyncio.create_task(get())
                await eventually(lambda: metrics.registry.get_sample_value(
                    "proxy_router_http_pool_waits_total", {"pool": "backend"}) == 1,
                    "the second request waits for the only connection")
                release.set()
                assert await asyncio.gather(first, second) == ["ok", "ok"]
    finally:
        await runner.cleanup()
    assert metrics.registry.get_sample_value(
        "proxy_router_http_pool_waits_total", {"pool": "backend"}) == 1
    assert metrics.registry.get_sample_value(
        "proxy_router_http_pool_wait_seconds_count", {"pool": "backend"}) == 1
    (warning,) = [e for e in logs if e["event"] == "http_pool_limit_reached"]
    assert (warning["pool"], warning["limit"]) == ("backend", 1)
    assert "secret" not in str(warning) and "127.0.0.1" not in str(warning)
