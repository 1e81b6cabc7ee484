"""``/metrics`` (``proxy_router.metrics``): Prometheus names, one registry per router,
HTTP requests by route template, MOR-RPC requests, and sessions and MOR counted from
Marketplace events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from proxy_router.chain.events import MarketEvent
from proxy_router.chain.types import Session
from proxy_router.metrics import CONTENT_TYPE, Metrics
from proxy_router.morrpc import RpcClient, RpcError, RpcServer, SessionKey, Signer
from tests.morrpc.serve import register_test_methods

ME, OTHER = "0x" + "aa" * 20, "0x" + "bb" * 20
S1, S2, S3 = ("0x" + c * 64 for c in "123")


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


class FakeIndex:
    """What ``follow_market`` and ``watch`` use of the market index."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.listeners: list[Callable[[MarketEvent], Any]] = []
        self.lag_blocks = 3

    def subscribe(self, listener: Callable[[MarketEvent], Any]) -> None:
        self.listeners.append(listener)

    def emit(self, name: str, **args: Any) -> None:
        for listener in self.listeners:
            listener(MarketEvent.from_args(name, 1, args))


def sessions(**parties: tuple[str, str]) -> dict[str, Session]:
    """Sessions by id (S1..S3), each given as (user, provider)."""
    ids = {"S1": S1, "S2": S2, "S3": S3}
    return {ids[k]: Session(ids[k], user=u, provider=p) for k, (u, p) in parties.items()}


def test_names_follow_prometheus_conventions():
    for role in ("consumer", "provider"):
        metrics = Metrics(role)  # type: ignore[arg-type]
        for family in metrics.registry.collect():
            assert family.name.startswith("proxy_router_"), family.name
            if family.type == "histogram":
                assert family.name.endswith("_seconds"), family.name
            if family.type == "counter":
                assert not family.name.endswith("_total")  # the client appends it


def test_each_router_has_its_own_registry():
    a, b = Metrics("consumer"), Metrics("consumer")
    a.observe_answer("m", ttft_s=0.2, usage={"prompt_tokens": 3, "completion_tokens": 5})
    assert value(a, "proxy_router_tokens_total", model="m", type="completion") == 5
    assert value(b, "proxy_router_tokens_total", model="m", type="completion") == 0


def test_mor_is_spent_by_a_consumer_and_earned_by_a_provider():
    consumer, provider = Metrics("consumer"), Metrics("provider")
    assert any(f.name == "proxy_router_spent_mor_wei" for f in consumer.registry.collect())
    assert not any("earned" in f.name for f in consumer.registry.collect())
    assert any(f.name == "proxy_router_earned_mor_wei" for f in provider.registry.collect())
    assert not any("spent" in f.name for f in provider.registry.collect())


def test_a_consumer_counts_its_own_sessions_and_what_it_paid():
    index, metrics = FakeIndex(), Metrics("consumer")
    metrics.follow_market(cast(Any, index), ME.upper().replace("0X", "0x"))
    index.sessions = sessions(S1=(ME, OTHER), S2=(OTHER, ME), S3=(ME, OTHER))
    index.emit("SessionOpened", user=ME, sessionId=S1, provider=OTHER)
    index.emit("SessionOpened", user=OTHER, sessionId=S2, provider=ME)  # not ours as a user
    index.emit("SessionOpened", user=ME, sessionId=S3, provider=OTHER)
    index.emit("SessionSettled", sessionId=S1, providerEarned=7 * 10**15,
               userRefund=10**15, held=0, disputed=False)
    index.emit("SessionSettled", sessionId=S2, providerEarned=10**18, userRefund=0, held=0,
               disputed=False)
    index.emit("SessionSettled", sessionId=S3, providerEarned=2 * 10**15, userRefund=0,
               held=2 * 10**15, disputed=True)
    index.emit("ProviderClaimed", provider=OTHER, sessionId=S3, amount=2 * 10**15)

    assert value(metrics, "proxy_router_sessions_opened_total") == 2
    assert value(metrics, "proxy_router_sessions_closed_total", disputed="false") == 1
    assert value(metrics, "proxy_router_sessions_closed_total", disputed="true") == 1
    # The user pays the provider's whole share, held or not.
    assert value(metrics, "proxy_router_spent_mor_wei_total") == 9 * 10**15


def test_a_provider_counts_what_reached_it_including_claimed_disputed_shares():
    index, metrics = FakeIndex(), Metrics("provider")
    metrics.follow_market(cast(Any, index), ME)
    index.sessions = sessions(S1=(OTHER, ME), S2=(OTHER, ME), S3=(ME, OTHER))
    index.emit("SessionOpened", user=OTHER, sessionId=S1, provider=ME)
    index.emit("SessionSettled", sessionId=S1, providerEarned=5 * 10**15, userRefund=0,
               held=0, disputed=False)
    index.emit("SessionSettled", sessionId=S2, providerEarned=3 * 10**15, userRefund=0,
               held=3 * 10**15, disputed=True)
    assert value(metrics, "proxy_router_earned_mor_wei_total") == 5 * 10**15
    index.emit("ProviderClaimed", provider=ME, sessionId=S2, amount=3 * 10**15)
    index.emit("ProviderClaimed", provider=OTHER, sessionId=S3, amount=10**18)
    index.emit("SessionSettled", sessionId=S3, providerEarned=10**18, userRefund=0, held=0,
               disputed=False)
    assert value(metrics, "proxy_router_earned_mor_wei_total") == 8 * 10**15
    assert value(metrics, "proxy_router_sessions_opened_total") == 1
    assert value(metrics, "proxy_router_sessions_closed_total", disputed="true") == 1


def test_gauges_are_read_from_the_router_at_scrape_time():
    index, metrics = FakeIndex(), Metrics("provider")
    state = {"sessions": 2, "connections": 1}
    metrics.watch(index=cast(Any, index), active_sessions=lambda: state["sessions"],
                  rpc_connections=lambda: state["connections"])
    assert value(metrics, "proxy_router_index_lag_blocks") == 3
    assert value(metrics, "proxy_router_sessions_active") == 2
    state["connections"] = 4
    index.lag_blocks = 0
    assert value(metrics, "proxy_router_rpc_connections") == 4
    assert value(metrics, "proxy_router_index_lag_blocks") == 0


async def test_http_requests_are_counted_by_route_template_not_raw_path():
    metrics = Metrics("consumer")

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    app = web.Application(middlewares=[metrics.middleware])
    app.router.add_post("/blockchain/sessions/{session}/close", ok)
    app.router.add_get("/gone", missing)
    app.router.add_get("/metrics", metrics.handler)
    async with TestClient(TestServer(app)) as client:
        for session in (S1, S2):
            assert (await client.post(f"/blockchain/sessions/{session}/close")).status == 200
        assert (await client.get("/gone")).status == 404
        assert (await client.get(f"/no/such/{S1}")).status == 404
        resp = await client.get("/metrics")
        assert resp.headers["Content-Type"] == CONTENT_TYPE
        text = await resp.text()
    route = "/blockchain/sessions/{session}/close"
    assert value(metrics, "proxy_router_http_requests_total", method="POST", route=route,
                 status="200") == 2
    assert value(metrics, "proxy_router_http_request_duration_seconds_count", method="POST",
                 route=route) == 2
    assert value(metrics, "proxy_router_http_requests_total", method="GET", route="/gone",
                 status="404") == 1
    assert value(metrics, "proxy_router_http_requests_total", method="GET",
                 route="unmatched", status="404") == 1
    assert S1 not in text  # ids never become label values


async def test_a_client_that_went_away_is_a_499_not_a_server_error():
    metrics = Metrics("consumer")

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        while True:
            await resp.write(b"data: {}\n\n")
            await asyncio.sleep(0.01)

    app = web.Application(middlewares=[metrics.middleware])
    app.router.add_post("/v1/chat/completions", endless)
    labels = {"method": "POST", "route": "/v1/chat/completions", "status": "499"}
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/v1/chat/completions")
        await resp.content.readline()
        resp.close()  # the client hangs up mid-stream
        for _ in range(200):
            if value(metrics, "proxy_router_http_requests_total", **labels):
                break
            await asyncio.sleep(0.02)
    assert value(metrics, "proxy_router_http_requests_total", **labels) == 1


async def test_mor_rpc_requests_are_counted_by_method_and_result_code():
    metrics = Metrics("provider")
    provider, consumer = Signer.from_key("0x" + "11" * 32), Signer.from_key("0x" + "22" * 32)
    server = RpcServer(provider, observer=metrics)
    register_test_methods(server)
    metrics.watch(index=cast(Any, FakeIndex()), active_sessions=lambda: 0,
                  rpc_connections=lambda: server.open_connections)
    port = await server.start("127.0.0.1", 0)
    try:
        async with RpcClient(f"127.0.0.1:{port}", consumer, provider.address) as client:
            await client.call("test.echo", {})
            try:
                await client.call("test.fail", {"code": "NO_CAPACITY"})
            except RpcError:
                pass
            key = SessionKey.generate()
            cipher = await client.cipher_for(key)
            async for _ in client.stream("test.count", {"n": 3, "key": key.public_key_hex},
                                         cipher=cipher):
                pass
            assert value(metrics, "proxy_router_rpc_connections") == 1
    finally:
        await server.stop()
    assert value(metrics, "proxy_router_rpc_requests_total", method="test.echo",
                 code="OK") == 1
    assert value(metrics, "proxy_router_rpc_requests_total", method="test.fail",
                 code="NO_CAPACITY") == 1
    assert value(metrics, "proxy_router_rpc_requests_total", method="test.count",
                 code="OK") == 1
    assert value(metrics, "proxy_router_rpc_request_duration_seconds_count",
                 method="test.count") == 1
