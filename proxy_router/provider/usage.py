"""What one prompt used and how fast it ran: the figures the signed receipt carries.

Counts come from the backend's usage object when it sends one; otherwise they are
estimated here (about 4 characters per token), so a backend without usage reporting
still yields a receipt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy_router import bounded_json
from proxy_router.provider.sse_decoder import MAX_EVENT_BYTES

_TEXT_KEY_END = b'content":"'


@dataclass(frozen=True, slots=True)
class PromptUsage:
    """Per-prompt figures for the signed receipt; `reported` = counts came from the backend."""

    ttft_ms: int
    prompt_tokens: int
    completion_tokens: int
    tps_x1000: int
    reported: bool


def estimate_tokens(text: str) -> int:
    """Rough token count (~4 characters per token) for backends that report no usage."""
    return (len(text) + 3) // 4


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Rough prompt size from the request's message texts."""
    total = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return (total + 3) // 4


def _has_text(payload: bytes) -> bool:
    """A non-empty `"content":"…"` or `"reasoning_content":"…"` string in compact JSON."""
    i = payload.find(_TEXT_KEY_END)
    while i >= 0:
        i += len(_TEXT_KEY_END)
        if payload[i : i + 1] != b'"':
            return True
        i = payload.find(_TEXT_KEY_END, i)
    return False


class UsageMeter:
    """Measures one prompt: TTFT, token counts and decode speed.

    Create it right before sending the request, `observe_raw()` each streamed event
    (or `observe_response()` a non-stream reply), then read `result()`.
    Without a usage object from the backend, completion tokens are the content-bearing
    deltas (llama.cpp sends one token per chunk) and prompt tokens the
    `prompt_tokens_estimate` given here.
    Speed is the decode rate: tokens after the first over the time after the first
    token; with fewer than two streamed tokens (or no stream) it is tokens over the
    whole request time.
    """

    __slots__ = (
        "_clock",
        "_counted",
        "_end",
        "_first",
        "_last",
        "_prompt_estimate",
        "_start",
        "_usage",
    )

    def __init__(
        self, *, prompt_tokens_estimate: int = 0, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._clock = clock
        self._start = clock()
        self._first: float | None = None
        self._last: float | None = None
        self._end: float | None = None
        self._counted = 0
        self._usage: Mapping[str, Any] | None = None
        self._prompt_estimate = prompt_tokens_estimate

    def observe(self, chunk: Mapping[str, Any]) -> None:
        """Account one streamed chunk, parsed."""
        now = self._clock()
        self._end = now
        usage = chunk.get("usage")
        if usage:
            self._usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if delta and (
                delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls")
            ):
                self._counted += 1
                if self._first is None:
                    self._first = now
                self._last = now

    def observe_raw(self, payload: bytes, event: Mapping[str, Any] | None = None) -> None:
        """Account one streamed chunk given as its raw JSON bytes (`event`: its parsed form,
        when the caller parsed it). Same figures as `observe()`, found by byte search:
        a chunk is a token when it has a non-empty `content` or `reasoning_content`
        string; chunks that could carry usage or tool calls, or JSON written with
        spaces (where the byte patterns do not apply), are parsed.
        """
        if event is None:
            if _has_text(payload):
                now = self._clock()
                self._end = self._last = now
                self._counted += 1
                if self._first is None:
                    self._first = now
                return
            if not (b'"usage"' in payload or b'"tool_calls"' in payload or b'": ' in payload):
                self._end = self._clock()
                return
            try:
                event = bounded_json.loads(payload, max_bytes=MAX_EVENT_BYTES)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                self._end = self._clock()
                return
        self.observe(event)

    def observe_response(self, response: Mapping[str, Any]) -> None:
        """Account a whole non-stream reply (its arrival is the first and last token)."""
        now = self._clock()
        self._first = self._last = self._end = now
        usage = response.get("usage")
        if usage:
            self._usage = usage
        text = ""
        for choice in response.get("choices") or ():
            message = choice.get("message") or {}
            content = message.get("content")
            if isinstance(content, str):
                text += content
        self._counted = estimate_tokens(text)

    def result(self) -> PromptUsage:
        """The figures so far (call after the stream ended)."""
        end = self._end if self._end is not None else self._clock()
        first = self._first if self._first is not None else end
        usage = self._usage or {}
        completion = usage.get("completion_tokens")
        prompt = usage.get("prompt_tokens")
        reported = isinstance(completion, int)
        n = completion if isinstance(completion, int) else self._counted
        return PromptUsage(
            ttft_ms=max(0, round((first - self._start) * 1000)),
            prompt_tokens=prompt if isinstance(prompt, int) else self._prompt_estimate,
            completion_tokens=n,
            tps_x1000=round(self._tokens_per_second(n, first, end) * 1000),
            reported=reported,
        )

    def _tokens_per_second(self, n: int, first: float, end: float) -> float:
        span = (self._last - first) if self._last is not None else 0.0
        if n >= 2 and self._counted >= 2 and span > 0:
            return (n - 1) / span
        total = end - self._start
        return n / total if total > 0 else 0.0
