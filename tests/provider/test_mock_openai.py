"""The MOCK OpenAI server itself: the shapes it serves and its command line."""

from __future__ import annotations

import asyncio
import socket
import sys

import aiohttp

from proxy_router.testing.mock_openai import MockOpenAIServer, start_mock_openai
from proxy_router.testing.ports import free_port


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


async def test_command_line_serves_until_terminated(http: aiohttp.ClientSession) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy_router.testing.mock_openai", "--port", str(port),
        "--tokens", "3", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert f"http://127.0.0.1:{port}/v1".encode() in line and b"MOCK" in line
        body = {"messages": [{"role": "user", "content": "x"}]}
        async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as resp:
            assert (await resp.json())["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
