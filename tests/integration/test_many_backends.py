"""One provider, one model, two backends (issue 13): chats are spread over both, a
backend that stops is taken out while chats keep succeeding, and it is taken back
once it answers again. Real routers as processes on a real anvil; the backends are
MOCK servers in their own processes, so that one can be stopped and started again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy_router.dev.anvil import dev_address
from proxy_router.ports import free_port
from proxy_router.provider.backend_pool import backend_label
from tests.integration.conftest import MockBackend, MockDevnet
from tests.integration.helpers import chat, eventually

pytestmark = pytest.mark.integration

FARM_PROVIDER, FARM_USER = 4, 5
ARGS = ["--tokens", "8", "--token-delay", "0.02"]


@dataclass
class Farm:
    consumer: str
    model: str
    metrics_url: str
    backends: list[MockBackend]


@pytest.fixture(scope="module")
def farm(mock_devnet: MockDevnet) -> Iterator[Farm]:
    backends = [MockBackend(free_port(), ARGS).start() for _ in range(2)]
    try:
        endpoint, _ = mock_devnet.net.add_provider(
            FARM_PROVIDER, None, price=10**14, slots=2,
            backend_urls=[b.url for b in backends],
            extra_env={"PROMPTS_PER_SESSION": "4"})
        consumer = mock_devnet.net.add_consumer(
            FARM_USER, {"PROVIDER_ALLOWLIST": dev_address(FARM_PROVIDER)})
        yield Farm(consumer, mock_devnet.state.model_name, f"http://{endpoint}/metrics",
                   backends)
    finally:
        for backend in backends:
            backend.stop()


async def backend_metric(farm: Farm, name: str, backend: MockBackend) -> float:
    async with aiohttp.ClientSession() as http, http.get(farm.metrics_url) as resp:
        text = await resp.text()
    wanted = backend_label(backend.url)
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == name and s.labels.get("backend") == wanted)


async def chats(farm: Farm, n: int) -> None:
    answers = await asyncio.gather(*(chat(farm.consumer, model=farm.model) for _ in range(n)))
    for status, body in answers:
        assert status == 200, body
        assert body["choices"][0]["message"]["content"]


async def test_a_model_with_two_backends_uses_both_and_survives_losing_one(farm: Farm) -> None:
    first, second = farm.backends
    await chats(farm, 6)
    served = [await backend_metric(farm, "proxy_router_backend_requests_total", b)
              for b in farm.backends]
    assert all(n > 0 for n in served), f"both backends served chats: {served}"

    first.stop()
    await chats(farm, 4)  # the one that meets the dead backend is retried on the other
    assert await backend_metric(farm, "proxy_router_backend_up", first) == 0
    assert await backend_metric(farm, "proxy_router_backend_up", second) == 1

    first.start()  # on the same port

    async def taken_back() -> bool:
        return await backend_metric(farm, "proxy_router_backend_up", first) == 1

    await eventually(taken_back, 30, "the provider's probe takes it back")
    before = await backend_metric(farm, "proxy_router_backend_requests_total", first)
    await chats(farm, 4)
    assert await backend_metric(farm, "proxy_router_backend_requests_total", first) > before
