"""OpenAIBackend against the MOCK OpenAI server: what is sent, what comes back, how it fails."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy_router.dev.mock_openai import MockOpenAIServer
from proxy_router.ports import free_port
from proxy_router.provider.backend import (
    BackendError,
    BackendStreamBroken,
    BackendTimeouts,
    BackendUnavailable,
    OpenAIBackend,
    extract_error_message,
)
from proxy_router.provider.usage import UsageMeter
from tests.provider.fakes import Serve

PROMPT = {"messages": [{"role": "user", "content": "hello there"}], "model": "ignored"}
FAST = BackendTimeouts(connect=1.0, first_token=0.5, total=2.0)


def backend(url: str, http: aiohttp.ClientSession, **kw: Any) -> OpenAIBackend:
    return OpenAIBackend(url, model_name="served-model", session=http, **kw)


async def stream(b: OpenAIBackend, body: dict[str, Any] = PROMPT) -> list[dict[str, Any]]:
    """Every event of a streamed completion, parsed."""
    return [json.loads(p) async for batch in b.stream_events(body) for p in batch]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        c["delta"].get("content") or "" for ch in chunks for c in ch["choices"] if "delta" in c
    )


async def test_stream_yields_every_chunk_and_the_usage_chunk(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    chunks = await stream(backend(mock_openai.base_url, http))
    assert text_of(chunks) == "tok " * 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}


async def test_stream_request_names_the_served_model_and_asks_for_usage(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    body = {**PROMPT, "stream": False, "stream_options": {"other": 1}, "temperature": 0.1}
    await stream(backend(mock_openai.base_url, http, api_key="sk-test"), body)
    sent = mock_openai.last_request
    assert sent is not None
    assert sent["model"] == "served-model" and sent["stream"] is True
    assert sent["stream_options"] == {"other": 1, "include_usage": True}
    assert sent["temperature"] == 0.1 and sent["messages"] == PROMPT["messages"]
    assert mock_openai.last_headers["Authorization"] == "Bearer sk-test"


async def test_a_full_chat_completions_url_is_accepted(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    b = backend(mock_openai.base_url + "/chat/completions", http)
    assert b.base_url == mock_openai.base_url
    assert len(await stream(b)) == 7


async def test_keepalive_comments_between_chunks_are_skipped(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    mock_openai.options.keepalive_comments = True
    chunks = await stream(backend(mock_openai.base_url, http))
    assert text_of(chunks) == "tok " * 5


async def test_non_stream_returns_the_completion(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    body = {**PROMPT, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 3}
    reply = await backend(mock_openai.base_url, http).complete_chat(body)
    assert reply["choices"][0]["message"]["content"] == "tok " * 3
    assert reply["usage"]["completion_tokens"] == 3
    sent = mock_openai.last_request
    assert sent is not None and sent["stream"] is False and "stream_options" not in sent


async def test_connections_are_kept_alive_across_prompts(mock_openai: MockOpenAIServer) -> None:
    created = 0

    async def on_create(*_: object) -> None:
        nonlocal created
        created += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        b = backend(mock_openai.base_url, http)
        for _ in range(3):
            await stream(b)
        await b.complete_chat(PROMPT)
    assert created == 1


async def test_leaving_a_stream_early_does_not_break_the_next_prompt(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    mock_openai.options.tokens = 50
    b = backend(mock_openai.base_url, http)
    events = b.stream_events(PROMPT)
    async for _ in events:
        break
    await events.aclose()
    assert len(await stream(b)) == 52


@pytest.mark.parametrize("streamed", [True, False])
async def test_http_500_is_a_backend_error_with_the_upstream_message(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession, streamed: bool
) -> None:
    mock_openai.options.mode = "fail"
    mock_openai.options.fail_message = "model overloaded"
    b = backend(mock_openai.base_url, http)
    with pytest.raises(BackendError) as err:
        await (stream(b) if streamed else b.complete_chat(PROMPT))
    assert err.value.status == 500 and err.value.message == "model overloaded"


@pytest.mark.parametrize("streamed", [True, False])
async def test_connection_refused_is_backend_unavailable(
    http: aiohttp.ClientSession, streamed: bool
) -> None:
    b = backend(f"http://127.0.0.1:{free_port()}/v1", http, timeouts=FAST)
    with pytest.raises(BackendUnavailable) as err:
        await (stream(b) if streamed else b.complete_chat(PROMPT))
    assert "connection refused" in err.value.reason


async def test_a_connection_dropped_mid_stream_raises_after_the_chunks_received(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    mock_openai.options.mode = "drop"
    mock_openai.options.drop_after = 3
    received: list[bytes] = []
    with pytest.raises(BackendStreamBroken) as err:
        async for batch in backend(mock_openai.base_url, http).stream_events(PROMPT):
            received += batch
    assert len(received) == 3 and err.value.chunks == 3


async def test_a_dropped_non_stream_request_is_backend_unavailable(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    mock_openai.options.mode = "drop"
    with pytest.raises(BackendUnavailable):
        await backend(mock_openai.base_url, http).complete_chat(PROMPT)


async def test_no_first_token_times_out_as_backend_unavailable(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    mock_openai.options.mode = "stall"
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"no first token within 0\.5 s"):
        await stream(backend(mock_openai.base_url, http, timeouts=FAST))
    assert 0.4 < time.monotonic() - started < 1.5


async def test_a_stream_slower_than_the_total_timeout_is_broken(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    mock_openai.options.token_delay = 0.1
    timeouts = BackendTimeouts(connect=1.0, first_token=1.0, total=0.35)
    with pytest.raises(BackendStreamBroken, match="total timeout") as err:
        await stream(backend(mock_openai.base_url, http, timeouts=timeouts))
    assert 1 <= err.value.chunks < 5


# --- Streams no well-behaved mock produces: served raw. ---------------------------------

RawServer = Callable[[bytes], Awaitable[str]]


@pytest.fixture
def raw_sse(serve: Serve) -> RawServer:
    """Serve a fixed event-stream body on 127.0.0.1; gives a function body -> base URL."""
    async def start(body: bytes) -> str:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(body)
            return resp

        return await serve(handler)

    return start


CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n'
FINAL = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'


async def test_an_error_event_inside_the_stream_is_a_backend_error(
    raw_sse: RawServer, http: aiohttp.ClientSession
) -> None:
    url = await raw_sse(CHUNK + b'data: {"error":{"message":"context full","code":400}}\n\n')
    with pytest.raises(BackendError) as err:
        await stream(backend(url, http))
    assert (err.value.status, err.value.message) == (400, "context full")


async def test_a_stream_ending_without_done_or_finish_is_broken(
    raw_sse: RawServer, http: aiohttp.ClientSession
) -> None:
    url = await raw_sse(CHUNK + CHUNK)
    with pytest.raises(BackendStreamBroken, match="without \\[DONE\\]"):
        await stream(backend(url, http))


async def test_a_finished_stream_missing_only_done_is_accepted(
    raw_sse: RawServer, http: aiohttp.ClientSession
) -> None:
    url = await raw_sse(CHUNK + FINAL)
    assert len(await stream(backend(url, http))) == 2


@pytest.mark.parametrize("events", [b"", CHUNK + CHUNK], ids=["first-event", "later-event"])
async def test_garbage_data_is_a_broken_stream(
    raw_sse: RawServer, http: aiohttp.ClientSession, events: bytes
) -> None:
    """The first event is parsed, later token events only shape-checked: both catch it."""
    url = await raw_sse(events + b"data: <html>oops</html>\n\n")
    with pytest.raises(BackendStreamBroken, match="not JSON"):
        await stream(backend(url, http))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"error": {"message": "bad key", "type": "auth"}}', "bad key"),
        (b'{"error": "plain"}', "plain"),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b'{"detail": [{"loc": ["body"], "msg": "field required"}]}', "field required"),
        (b"upstream exploded", "upstream exploded"),
        (b"", "Internal Server Error"),
    ],
)
def test_error_messages_are_extracted_from_common_shapes(raw: bytes, message: str) -> None:
    assert message in extract_error_message(raw, "Internal Server Error")


def test_errors_carry_their_details() -> None:
    e = BackendError(503, "busy")
    u = BackendUnavailable("connection refused")
    b = BackendStreamBroken("reset", 4)
    assert (e.status, e.message) == (503, "busy") and "503" in str(e)
    assert u.reason == "connection refused" and "connection refused" in str(u)
    assert b.chunks == 4 and "after 4 chunks" in str(b)


async def test_a_non_stream_reply_later_than_the_total_timeout_is_unavailable(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    mock_openai.options.mode = "stall"
    timeouts = BackendTimeouts(connect=1.0, first_token=1.0, total=0.3)
    with pytest.raises(BackendUnavailable, match="timed out"):
        await backend(mock_openai.base_url, http, timeouts=timeouts).complete_chat(PROMPT)


# --- batches of raw payloads (the provider's hot path) -----------------------------------


async def collect_batches(it: AsyncIterator[list[bytes]]) -> list[list[bytes]]:
    return [batch async for batch in it]


async def test_the_first_event_comes_alone_then_each_read_as_one_batch(
    raw_sse: RawServer, http: aiohttp.ClientSession
) -> None:
    url = await raw_sse(CHUNK * 4 + FINAL + b"data: [DONE]\n\n")  # one write: one read
    meter = UsageMeter()
    batches = await collect_batches(backend(url, http).stream_events(PROMPT, meter))
    payload = CHUNK[6:-2]
    assert batches == [[payload], [payload] * 3 + [FINAL[6:-2]]]
    assert meter.result().completion_tokens == 4


async def test_each_payload_is_one_line_of_json_as_the_backend_wrote_it(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    batches = await collect_batches(backend(mock_openai.base_url, http).stream_events(PROMPT))
    payloads = [p for batch in batches for p in batch]
    assert len(payloads) == 7 and all(b"\n" not in p for p in payloads)
    assert text_of([json.loads(p) for p in payloads]) == "tok " * 5


async def test_events_before_an_error_in_the_same_read_are_still_yielded(
    raw_sse: RawServer, http: aiohttp.ClientSession
) -> None:
    url = await raw_sse(CHUNK * 3 + b'data: {"error":{"message":"context full","code":400}}\n\n')
    seen: list[list[bytes]] = []
    with pytest.raises(BackendError, match="context full"):
        async for batch in backend(url, http).stream_events(PROMPT):
            seen.append(batch)
    assert sum(len(b) for b in seen) == 3
