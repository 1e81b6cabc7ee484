"""The real thing: SmolLM2 in an embedded llama.cpp server, streamed through OpenAIBackend."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from proxy_router.dev.smollm2 import ModelNotInstalledError, smollm2_gguf_path
from proxy_router.provider.backend import BackendTimeouts, OpenAIBackend
from proxy_router.provider.llama import EmbeddedLlamaServer
from proxy_router.provider.usage import UsageMeter

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def smollm2_server() -> AsyncIterator[EmbeddedLlamaServer]:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    try:
        gguf = smollm2_gguf_path()
    except ModelNotInstalledError as exc:
        pytest.skip(str(exc))
    server = EmbeddedLlamaServer(gguf, model_alias="smollm2", n_ctx=512, startup_timeout=180)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        assert not server.running


async def test_streams_a_short_completion_from_smollm2(
    smollm2_server: EmbeddedLlamaServer,
) -> None:
    async with aiohttp.ClientSession() as http:
        backend = OpenAIBackend(
            smollm2_server.base_url,
            model_name="smollm2",
            session=http,
            timeouts=BackendTimeouts(first_token=60, total=120),
        )
        meter = UsageMeter()
        body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
        chunks = [json.loads(payload) async for batch in backend.stream_events(body, meter)
                  for payload in batch]
    text = "".join(c["delta"].get("content") or "" for ch in chunks for c in ch["choices"])
    assert text.strip(), "the model produced text"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    usage = meter.result()
    assert 1 <= usage.completion_tokens <= 8
    assert usage.ttft_ms > 0 and usage.tps_x1000 > 0
