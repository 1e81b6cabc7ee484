"""Fail like OpenAI, and wait rather than reject, through the whole paid path.

With the real model (``devnet``: llama.cpp, SmolLM2 with a 2048-token context), a
prompt over the context is a 400 ``context_length_exceeded``, streamed or not, which
the openai SDK raises as ``BadRequestError`` without retrying, and the session stays in
use. With a MOCK backend slow enough to keep 4 slots busy (``queued``), more streams
than slots all complete: the provider queues the rest; a prompt beyond the queue is a
429 with Retry-After; both routers show the queue in ``/metrics``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from openai import AsyncOpenAI, BadRequestError

from proxy_router.dev.devnet import MODEL_NAME, Devnet, DevnetState
from proxy_router.ports import free_port
from tests.integration.conftest import MockBackend, logs_of
from tests.integration.helpers import eventually, request
from tests.integration.test_metrics import metric, scrape

pytestmark = pytest.mark.integration

OVER_THE_CONTEXT = [{"role": "user", "content": "word " * 2500}]  # n_ctx is 2048
SLOTS, QUEUE_DEPTH = 4, 4
CHAT = {"method": "POST", "route": "/v1/chat/completions"}


def sdk(state: DevnetState) -> AsyncOpenAI:
    """The openai SDK as users run it: with its default retries."""
    return AsyncOpenAI(base_url=state.consumer_url, api_key="local")


async def chat_requests(state: DevnetState, status: str) -> float:
    samples = await scrape(state.consumer_base + "/metrics")
    return metric(samples, "proxy_router_http_requests_total", **CHAT, status=status)


# -- a prompt over the context, with the real model ------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["unstreamed", "streamed"])
async def test_a_prompt_over_the_context_is_a_400_context_length_exceeded_never_retried(
        devnet: DevnetState, streamed: bool) -> None:
    before = await chat_requests(devnet, "400")
    with pytest.raises(BadRequestError) as raised:
        await sdk(devnet).chat.completions.create(
            model=devnet.model_name, messages=OVER_THE_CONTEXT, max_tokens=8,  # type: ignore[arg-type]
            stream=streamed)
    err = raised.value
    assert err.status_code == 400
    assert err.code == "context_length_exceeded" and err.param == "messages"
    assert err.type == "invalid_request_error"
    assert "maximum context length is 2048 tokens" in err.message
    for internal in ("http", "/v1/", ".py", "127.0.0.1", devnet.root):
        assert internal not in err.message, err.message
    assert await chat_requests(devnet, "400") == before + 1, "the SDK did not retry it"


async def open_sessions(state: DevnetState) -> set[str]:
    status, rows = await request("GET", f"{state.consumer_base}/blockchain/sessions")
    assert status == 200, rows
    return {row["sessionId"] for row in rows if row["status"] == "open"}


async def test_a_refused_stream_is_a_json_error_and_its_session_stays_in_use(
        devnet: DevnetState) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(devnet.consumer_url + "/chat/completions", json={
                "model": devnet.model_name, "messages": OVER_THE_CONTEXT,
                "stream": True}) as refused:
            assert refused.status == 400
            assert refused.headers["Content-Type"].startswith("application/json")
            body = await refused.json()
        still_open = await open_sessions(devnet)
        async with http.post(devnet.consumer_url + "/chat/completions", json={
                "model": devnet.model_name, "max_tokens": 4, "messages": [
                    {"role": "user", "content": "Say hi."}]}) as answered:
            assert answered.status == 200, await answered.text()
            used = answered.headers["X-Session-Id"]
    assert body["error"]["code"] == "context_length_exceeded"
    assert used in still_open, "the refusal was the request's fault: the session goes on"
    assert "context_length_exceeded" in logs_of(devnet, "provider")


# -- more streams than slots, with a MOCK backend ------------------------------------------


@pytest.fixture(scope="module")
def queued(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetState]:
    """A provider with 4 slots and a queue of 4 in front of a MOCK backend whose streams
    take 50 ms a token; one session may run 16 prompts, so the consumer sends them all
    on and the provider's queue is what is tested."""
    backend = MockBackend(free_port(), ["--tokens", "200", "--token-delay", "0.05"]).start()
    net = Devnet(tmp_path_factory.mktemp("queue-devnet"), progress=lambda _: None)
    try:
        yield net.up(backend_url=backend.url, concurrent_slots=SLOTS, extra_router_env={
            "PROMPTS_PER_SESSION": "16", "PROMPT_QUEUE_DEPTH": str(QUEUE_DEPTH),
            "PROMPT_QUEUE_WAIT_S": "60", "FIRST_TOKEN_TIMEOUT_S": "90"})
    finally:
        net.down()
        backend.stop()


async def streamed(state: DevnetState, tokens: int) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.post(
            state.consumer_url + "/chat/completions", json={
                "model": state.model_name, "stream": True, "max_tokens": tokens,
                "messages": [{"role": "user", "content": "count"}]}) as resp:
        return resp.status, await resp.read()


async def provider_metrics(state: DevnetState) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                      float]:
    return await scrape(f"http://{state.provider_endpoint}/metrics")


async def test_eight_concurrent_streams_on_four_slots_all_complete(queued: DevnetState
                                                                   ) -> None:
    results = await asyncio.gather(*(streamed(queued, 12) for _ in range(2 * SLOTS)))
    for status, body in results:
        assert status == 200, body[-300:]
        assert body.count(b'"content":"tok "') == 12 and body.endswith(b"data: [DONE]\n\n")
    provider = await provider_metrics(queued)
    model = {"model": MODEL_NAME}
    assert metric(provider, "proxy_router_prompt_queue_wait_seconds_count", **model,
                  outcome="served") >= 2 * SLOTS
    assert metric(provider, "proxy_router_prompt_queue_refused_total", **model,
                  reason="full") == 0
    assert metric(provider, "proxy_router_prompt_queue_depth", **model) == 0


async def test_a_prompt_beyond_the_queue_is_a_429_with_retry_after_and_the_rest_complete(
        queued: DevnetState) -> None:
    model = {"model": MODEL_NAME}
    held = [asyncio.create_task(streamed(queued, 100)) for _ in range(SLOTS + QUEUE_DEPTH)]

    async def queue_full() -> bool:
        return metric(await provider_metrics(queued), "proxy_router_prompt_queue_depth",
                      **model) == QUEUE_DEPTH
    await eventually(queue_full, 30, "the provider's queue did not fill")
    async with aiohttp.ClientSession() as http, http.post(
            queued.consumer_url + "/chat/completions", json={
                "model": queued.model_name, "stream": True, "max_tokens": 4,
                "messages": [{"role": "user", "content": "one more"}]}) as resp:
        status, retry_after, body = resp.status, resp.headers.get("Retry-After"), \
            await resp.json()
    assert status == 429 and body["error"]["code"] == "no_capacity"
    assert retry_after is not None and int(retry_after) >= 1
    for status, text in await asyncio.gather(*held):
        assert status == 200 and text.endswith(b"data: [DONE]\n\n"), text[-300:]
    provider = await provider_metrics(queued)
    assert metric(provider, "proxy_router_prompt_queue_refused_total", **model,
                  reason="full") == 1
    assert metric(provider, "proxy_router_prompt_queue_wait_seconds_sum", **model,
                  outcome="served") > 0, "the queued prompts' waits are measured"
    consumer = await scrape(queued.consumer_base + "/metrics")
    assert metric(consumer, "proxy_router_prompt_queue_wait_seconds_count", **model,
                  outcome="served") >= SLOTS + QUEUE_DEPTH
