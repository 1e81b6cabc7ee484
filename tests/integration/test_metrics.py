"""Both routers export Prometheus metrics of the paid path (the real-model devnet):
requests by route template, time to first token, tokens, MOR-RPC traffic, and the
MOR the user spent and the provider earned, equal to the chain's settlements."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from proxy_router.chain.marketplace import Marketplace
from proxy_router.chain.types import Session
from proxy_router.dev.devnet import DevnetState

MESSAGES = [{"role": "user", "content": "Say hello in three words."}]


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def settled_sessions(market: Marketplace, fn: str, address: str) -> list[Session]:
    ids, _ = await market.client.call(market.contract, fn, address, 0, 1000)
    sessions = [await market.get_session(bytes(i)) for i in ids]
    return [s for s in sessions if s.closed]


async def test_a_paid_chat_shows_up_in_both_routers_metrics(devnet: DevnetState,
                                                            reader: Marketplace):
    consumer_url = devnet.consumer_base + "/metrics"
    provider_url = f"http://{devnet.provider_endpoint}/metrics"
    before = await scrape(consumer_url)
    async with aiohttp.ClientSession() as http:
        async with http.post(devnet.consumer_url + "/chat/completions", json={
                "model": devnet.model_name, "messages": MESSAGES, "max_tokens": 8,
                "stream": True}) as resp:
            assert resp.status == 200
            session_id = resp.headers["X-Session-Id"]
            await resp.read()
        async with http.post(f"{devnet.consumer_base}/blockchain/sessions/{session_id}/close",
                             headers=devnet.auth()) as resp:
            assert resp.status == 200, await resp.text()

    consumer = await scrape(consumer_url)
    chat = {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
    assert metric(consumer, "proxy_router_http_requests_total", **chat) == metric(
        before, "proxy_router_http_requests_total", **chat) + 1
    close = {"method": "POST", "route": "/blockchain/sessions/{session}/close",
             "status": "200"}
    assert metric(consumer, "proxy_router_http_requests_total", **close) >= 1
    assert metric(consumer, "proxy_router_time_to_first_token_seconds_count",
                  model=devnet.model_name) >= 1
    assert metric(consumer, "proxy_router_tokens_total", model=devnet.model_name,
                  type="completion") > metric(before, "proxy_router_tokens_total",
                                              model=devnet.model_name, type="completion")
    assert metric(consumer, "proxy_router_index_lag_blocks") < 10

    provider = await scrape(provider_url)
    assert metric(provider, "proxy_router_rpc_requests_total", method="session.prompt",
                  code="OK") >= 1
    assert metric(provider, "proxy_router_rpc_requests_total", method="session.report",
                  code="OK") >= 1
    assert metric(provider, "proxy_router_rpc_connections") >= 1  # the consumer's socket
    assert metric(provider, "proxy_router_tokens_total", model=devnet.model_name,
                  type="prompt") > 0

    # Sessions and MOR: exactly what the chain settled, counted from events by both sides
    # (read again until the indexes have folded the latest settlements).
    async def routers() -> tuple[float, float, float]:
        consumer, provider = await scrape(consumer_url), await scrape(provider_url)
        return (metric(consumer, "proxy_router_spent_mor_wei_total"),
                sum(metric(consumer, "proxy_router_sessions_closed_total", disputed=d)
                    for d in ("true", "false")),
                metric(provider, "proxy_router_earned_mor_wei_total"))

    async def chain() -> tuple[float, float, float]:
        mine = await settled_sessions(reader, "getSessionsByUser", devnet.user_address)
        theirs = await settled_sessions(reader, "getSessionsByProvider",
                                        devnet.provider_address)
        return (float(sum(s.provider_earned for s in mine)), float(len(mine)),
                float(sum(s.provider_earned - (0 if s.claimed else s.held)
                          for s in theirs)))

    deadline = time.monotonic() + 15
    while (seen := await routers()) != (settled := await chain()):
        assert time.monotonic() < deadline, f"routers {seen} != chain {settled}"
        await asyncio.sleep(0.3)
    assert settled[1] >= 1  # at least the session closed above
