"""UsageMeter: the per-prompt TTFT, token counts and speed that go into receipts."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from proxy_router.dev.mock_openai import MockOpenAIServer
from proxy_router.provider.backend import OpenAIBackend
from proxy_router.provider.usage import UsageMeter, estimate_prompt_tokens, estimate_tokens


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def role() -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}


def token(text: str = "x") -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def finish() -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


def usage(prompt: int, completion: int) -> dict[str, Any]:
    u = {"prompt_tokens": prompt, "completion_tokens": completion}
    return {"choices": [], "usage": u}


def test_stream_with_backend_usage() -> None:
    clock = FakeClock()
    meter = UsageMeter(clock=clock)
    clock.t += 0.250
    meter.observe(role())  # the role-only chunk is not a token
    meter.observe(token())  # first token at +250 ms
    for _ in range(10):
        clock.t += 0.020
        meter.observe(token())  # 10 more tokens, 20 ms apart
    meter.observe(finish())
    meter.observe(usage(prompt=12, completion=11))
    r = meter.result()
    assert r.ttft_ms == 250
    assert (r.prompt_tokens, r.completion_tokens, r.reported) == (12, 11, True)
    assert r.tps_x1000 == 50_000, "10 tokens after the first in 0.2 s = 50 tokens/s"


def test_stream_without_usage_counts_content_deltas() -> None:
    clock = FakeClock()
    meter = UsageMeter(prompt_tokens_estimate=7, clock=clock)
    clock.t += 0.1
    meter.observe(role())
    meter.observe(token("a"))
    clock.t += 0.1
    meter.observe({"choices": [{"index": 0, "delta": {"content": ""}}]})  # empty: not a token
    meter.observe(token("b"))
    clock.t += 0.1
    meter.observe(token("c"))
    meter.observe(finish())
    r = meter.result()
    assert (r.completion_tokens, r.prompt_tokens, r.reported) == (3, 7, False)
    assert r.ttft_ms == 100 and r.tps_x1000 == 10_000


def test_tool_call_and_reasoning_deltas_count_as_tokens() -> None:
    meter = UsageMeter(clock=FakeClock())
    meter.observe({"choices": [{"delta": {"reasoning_content": "hmm"}}]})
    meter.observe({"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]})
    assert meter.result().completion_tokens == 2


def test_a_single_token_uses_the_whole_request_time() -> None:
    clock = FakeClock()
    meter = UsageMeter(clock=clock)
    clock.t += 0.5
    meter.observe(token())
    r = meter.result()
    assert (r.ttft_ms, r.completion_tokens, r.tps_x1000) == (500, 1, 2_000)


def test_non_stream_response() -> None:
    clock = FakeClock()
    meter = UsageMeter(clock=clock)
    clock.t += 2.0
    meter.observe_response(
        {
            "choices": [{"message": {"role": "assistant", "content": "hello world"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 40, "total_tokens": 49},
        }
    )
    r = meter.result()
    assert (r.ttft_ms, r.prompt_tokens, r.completion_tokens) == (2000, 9, 40)
    assert r.tps_x1000 == 20_000 and r.reported


def test_non_stream_without_usage_estimates_from_the_text() -> None:
    clock = FakeClock()
    meter = UsageMeter(clock=clock)
    clock.t += 1.0
    meter.observe_response({"choices": [{"message": {"content": "x" * 40}}]})
    r = meter.result()
    assert (r.completion_tokens, r.reported, r.tps_x1000) == (10, False, 10_000)


def test_nothing_received_yields_zeros_not_errors() -> None:
    r = UsageMeter(clock=FakeClock()).result()
    assert (r.ttft_ms, r.completion_tokens, r.tps_x1000) == (0, 0, 0)


def test_estimates() -> None:
    assert [estimate_tokens(t) for t in ("", "abcd", "abcde")] == [0, 1, 2]
    body = {"messages": [{"content": "a" * 8}, {"content": [{"type": "text", "text": "b" * 4}]}]}
    assert estimate_prompt_tokens(body) == 3


async def test_measures_a_real_stream_from_the_mock(
    mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    mock_openai.options.token_delay = 0.01
    backend = OpenAIBackend(mock_openai.base_url, model_name="m", session=http)
    meter = UsageMeter()
    async for _ in backend.stream_events({"messages": [{"role": "user", "content": "a b c"}]},
                                         meter):
        pass
    r = meter.result()
    assert (r.prompt_tokens, r.completion_tokens, r.reported) == (3, 5, True)
    assert 5 <= r.ttft_ms < 500
    assert 20_000 < r.tps_x1000 < 110_000, "about 100 tokens/s at 10 ms per token"


RAW_CASES: list[dict[str, Any]] = [
    role(),
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"choices": [{"index": 0, "delta": {"content": None}}]},
    token("a"),
    token('"quoted"'),
    {"choices": [{"delta": {"content": None, "reasoning_content": "hmm"}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]},
    {"choices": [{"delta": {"tool_calls": []}}]},
    finish(),
    usage(prompt=5, completion=7),
]


def test_observe_raw_matches_observe_on_compact_and_spaced_json() -> None:
    """The byte-search path gives the same figures as parsing every chunk."""
    for separators in ((",", ":"), (", ", ": ")):
        parsed, raw = FakeClock(), FakeClock()
        by_dict, by_bytes = UsageMeter(clock=parsed), UsageMeter(clock=raw)
        for i, chunk in enumerate(RAW_CASES):
            parsed.t = raw.t = 100.0 + i * 0.01
            by_dict.observe(chunk)
            by_bytes.observe_raw(json.dumps(chunk, separators=separators).encode())
        assert by_bytes.result() == by_dict.result(), separators
        assert by_bytes.result().completion_tokens == 7  # from the usage object


def test_observe_raw_counts_content_without_usage_and_uses_a_given_parse() -> None:
    clock = FakeClock()
    meter = UsageMeter(prompt_tokens_estimate=3, clock=clock)
    clock.t += 0.1
    meter.observe_raw(b'{"choices":[{"delta":{"role":"assistant","content":""}}]}')
    meter.observe_raw(b'{"choices":[{"delta":{"content":"a"}}]}')
    clock.t += 0.1
    meter.observe_raw(b'{"choices":[{"delta":{"content":"b"}}]}')
    done = finish()
    meter.observe_raw(json.dumps(done).encode(), done)
    r = meter.result()
    assert (r.completion_tokens, r.prompt_tokens, r.reported, r.ttft_ms) == (2, 3, False, 100)
