"""The MOCK OpenAI server itself: the shapes it serves and its command line."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp

from proxy_router.dev.mock_openai import MockOpenAIServer, spawn_mock_openai, start_mock_openai
from proxy_router.ports import free_port


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


async def test_start_helper_returns_base_url_and_stop(http: aiohttp.ClientSession) -> None:
    base_url, stop = await start_mock_openai(tokens=2, model="mock-x")
    try:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        async with http.get(base_url + "/models") as resp:
            assert (await resp.json())["data"][0]["id"] == "mock-x"
    finally:
        await stop()


async def test_non_stream_reply_has_the_openai_shape(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "one two"}]}
    async with http.post(mock_openai.base_url + "/chat/completions", json=body) as resp:
        reply = await resp.json()
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": "tok " * 5}
    assert reply["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert mock_openai.requests_seen == 1


async def test_stream_without_include_usage_has_no_usage_chunk(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with http.post(mock_openai.base_url + "/chat/completions", json=body) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        raw = await resp.read()
    assert raw.count(b"data: ") == 5 + 1 + 1  # tokens, finish chunk, [DONE]
    assert b'"usage"' not in raw and raw.endswith(b"data: [DONE]\n\n")


async def test_bad_requests_get_an_openai_error(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(mock_openai.base_url + "/chat/completions", json={}) as resp:
        assert resp.status == 400
        assert "messages" in (await resp.json())["error"]["message"]


async def test_command_line_serves_until_terminated(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "mock.log"
    proc = await asyncio.to_thread(spawn_mock_openai, port, ["--tokens", "3"], log_path=log)
    try:
        line = log.read_text().splitlines()[0]
        assert f"http://127.0.0.1:{port}/v1" in line and "MOCK" in line
        body = {"messages": [{"role": "user", "content": "x"}]}
        async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as resp:
            assert (await resp.json())["usage"]["completion_tokens"] == 3
    finally:
        assert await proc.stop_async(timeout=10) == 0  # SIGTERM is a clean exit
