"""What one prompt used and how fast it ran: the figures the signed receipt carries.

Counts come, best first, from the backend's usage object (a stream's last event: the
provider always asks for it with ``stream_options.include_usage``), from the backend's
own count asked after the answer (``count()``: the service asks the backend for the
prompt's count and tokenizes the streamed text, for servers such as llama-cpp-python
whose streams carry no usage), from the content chunks counted (one token per chunk on
most servers, fewer tokens than chunks never, more for multi-byte text), or from about
4 characters per token. Each count says which (``PromptUsage.prompt_source`` and
``completion_source``); the last two are estimates, and say so (``estimated``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from proxy_router import bounded_json
from proxy_router.provider.sse_decoder import MAX_EVENT_BYTES

_TEXT_KEYS = (b'content":"', b'"text":"')
"""What precedes a token's text: chat deltas (``content``, ``reasoning_content``), legacy
completion choices (``text``)."""
_BACKSLASH = 0x5C

CountSource = Literal["backend", "tokenizer", "chunks", "estimate"]
"""Where a count came from: the backend's usage, its tokenizer, content chunks counted,
or characters / 4."""
ESTIMATES: frozenset[CountSource] = frozenset({"chunks", "estimate"})


@dataclass(frozen=True, slots=True)
class PromptUsage:
    """Per-prompt figures for the signed receipt; `reported` = the completion count came
    from the backend's usage object."""

    ttft_ms: int
    prompt_tokens: int
    completion_tokens: int
    tps_x1000: int
    reported: bool
    prompt_source: CountSource = "backend"
    completion_source: CountSource = "backend"

    @property
    def estimated(self) -> tuple[str, ...]:
        """The counts (``prompt``, ``completion``) that are estimates, not the backend's."""
        return tuple(kind for kind, source in (("prompt", self.prompt_source),
                                               ("completion", self.completion_source))
                     if source in ESTIMATES)


def estimate_tokens(text: str) -> int:
    """Rough token count (~4 characters per token) for backends that report no usage."""
    return (len(text) + 3) // 4


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Rough prompt size from the request's message texts (chat), its ``prompt`` (legacy
    completions) or its ``input`` (embeddings); token arrays count as given."""
    total = 0
    for key in ("prompt", "input"):
        given = body.get(key)
        for item in (given if isinstance(given, list) else [given]):
            if isinstance(item, str):
                total += len(item)
            elif isinstance(item, int):
                total += 4
            elif isinstance(item, list):
                total += 4 * len(item)
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return (total + 3) // 4


def _texts(payload: bytes) -> list[bytes]:
    """The non-empty `"content":"…"`, `"reasoning_content":"…"` (chat) and `"text":"…"`
    (legacy completions) strings of compact JSON, still JSON-escaped (decoded once, at
    the end, and only if needed)."""
    found: list[bytes] = []
    for key in _TEXT_KEYS:
        i = payload.find(key)
        while i >= 0:
            i += len(key)
            j = payload.find(b'"', i)
            while j > i and payload[j - 1] == _BACKSLASH and _escaped(payload, j):
                j = payload.find(b'"', j + 1)
            if j < 0:
                break
            if j > i:
                found.append(payload[i:j])
            i = payload.find(key, j)
    return found


def _escaped(payload: bytes, j: int) -> bool:
    """Whether the quote at ``j`` is escaped (an odd run of backslashes before it)."""
    n = 0
    while payload[j - 1 - n] == _BACKSLASH:
        n += 1
    return n % 2 == 1


class UsageMeter:
    """Measures one prompt: TTFT, token counts and decode speed.

    Create it right before sending the request, `observe_raw()` each streamed event
    (or `observe_response()` a non-stream reply), then read `result()`.
    Without a usage object from the backend, the counts `missing()` may be learnt from
    the backend afterwards (`count()`, the completion from `text()`); failing that,
    completion tokens are the content-bearing deltas and prompt tokens the
    `prompt_tokens_estimate` given here.
    Speed is the decode rate: tokens after the first over the time after the first
    token; with fewer than two streamed tokens (or no stream) it is tokens over the
    whole request time.
    """

    __slots__ = (
        "_clock",
        "_counted",
        "_end",
        "_exact",
        "_first",
        "_last",
        "_prompt_estimate",
        "_start",
        "_text",
        "_tools",
        "_usage",
        "streamed",
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
        self._text: list[bytes | str] = []
        """The answer's text as it came: escaped JSON bytes (raw path) or parsed strings."""
        self._tools = False
        self._exact: dict[str, tuple[int, CountSource]] = {}
        """Counts learnt after the answer (``count()``), by ``prompt``/``completion``."""
        self.streamed = False

    def observe(self, chunk: Mapping[str, Any]) -> None:
        """Account one streamed chunk, parsed."""
        now = self._clock()
        self._end = now
        self.streamed = True
        usage = chunk.get("usage")
        if usage:
            self._usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if not delta:
                if isinstance(choice.get("text"), str):  # a legacy completion's chunk
                    delta = {"content": choice["text"]}
                else:
                    continue
            texts = [t for t in (delta.get("reasoning_content"), delta.get("content"))
                     if isinstance(t, str) and t]
            if delta.get("tool_calls"):
                self._tools = True
            elif not texts:
                continue
            self._text.extend(texts)
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
        self.streamed = True
        if event is None:
            texts = _texts(payload)
            if texts:
                now = self._clock()
                self._end = self._last = now
                self._counted += 1
                self._text.extend(texts)
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
            message = choice.get("message") or {"content": choice.get("text")}
            content = message.get("content")
            if isinstance(content, str):
                text += content
            if message.get("tool_calls"):
                self._tools = True
        self._text = [text] if text else []
        self._counted = estimate_tokens(text)

    def missing(self) -> tuple[str, ...]:
        """The counts (``prompt``, ``completion``) the backend's usage did not give."""
        usage = self._usage or {}
        return tuple(kind for kind in ("prompt", "completion")
                     if not isinstance(usage.get(f"{kind}_tokens"), int)
                     and kind not in self._exact)

    def text(self) -> str | None:
        """The answer's whole text (reasoning included), for a tokenizer to count; None
        when it holds tool calls, which a count of the text would leave out."""
        if self._tools:
            return None
        try:
            return "".join(part if isinstance(part, str)
                           else json.loads(b'"' + part + b'"') for part in self._text)
        except ValueError:
            return None

    def count(self, kind: Literal["prompt", "completion"], tokens: int,
              source: CountSource) -> None:
        """A count learnt from the backend after the answer (see ``missing()``)."""
        self._exact[kind] = (tokens, source)

    def result(self) -> PromptUsage:
        """The figures so far (call after the stream ended)."""
        end = self._end if self._end is not None else self._clock()
        first = self._first if self._first is not None else end
        prompt, prompt_source = self._figure("prompt", self._prompt_estimate, "estimate")
        completion, completion_source = self._figure(
            "completion", self._counted, "chunks" if self.streamed else "estimate")
        return PromptUsage(
            ttft_ms=max(0, round((first - self._start) * 1000)),
            prompt_tokens=prompt,
            completion_tokens=completion,
            tps_x1000=round(self._tokens_per_second(completion, first, end) * 1000),
            reported=completion_source == "backend",
            prompt_source=prompt_source,
            completion_source=completion_source,
        )

    def _figure(self, kind: str, fallback: int, how: CountSource) -> tuple[int, CountSource]:
        reported = (self._usage or {}).get(f"{kind}_tokens")
        if isinstance(reported, int):
            return reported, "backend"
        return self._exact.get(kind, (fallback, how))

    def _tokens_per_second(self, n: int, first: float, end: float) -> float:
        span = (self._last - first) if self._last is not None else 0.0
        if n >= 2 and self._counted >= 2 and span > 0:
            return (n - 1) / span
        total = end - self._start
        return n / total if total > 0 else 0.0


_SOURCES: tuple[CountSource, ...] = ("backend", "tokenizer", "chunks", "estimate")
"""Count sources, best first: a sum is as good as its worst part."""


class MeterSum(UsageMeter):
    """The meters of one request's ``n`` generations (``n > 1``, ``provider.choices``)
    read as one prompt's figures, for the store and the trailer.

    The prompt counts once, as OpenAI bills ``n`` (the same prompt, evaluated for one
    user): generation 0's count, and the others are never asked for theirs. Completions
    are summed; TTFT runs to the first token of any generation, from this meter's start
    (the prompt's slot); the speed is every streamed token after that one over the time
    to the last. Each generation's missing counts are learnt on its own meter, so
    ``missing()`` is empty here.
    """

    __slots__ = ("meters",)

    def __init__(
        self, *, prompt_tokens_estimate: int = 0, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        super().__init__(prompt_tokens_estimate=prompt_tokens_estimate, clock=clock)
        self.meters: dict[int, UsageMeter] = {}
        """Each started generation's meter, by its choice index."""

    def start(self, index: int) -> UsageMeter:
        """The meter of generation ``index``, created as it starts."""
        meter = UsageMeter(prompt_tokens_estimate=self._prompt_estimate, clock=self._clock)
        if index:  # counted once, by generation 0: no backend is asked again
            meter.count("prompt", self._prompt_estimate, "estimate")
        self.meters[index] = meter
        return meter

    def missing(self) -> tuple[str, ...]:
        return ()

    def result(self) -> PromptUsage:
        meters = [self.meters[i] for i in sorted(self.meters)]
        if not meters:
            return super().result()
        parts = [m.result() for m in meters]
        end = max((m._end for m in meters if m._end is not None), default=self._clock())
        first = min((m._first for m in meters if m._first is not None), default=end)
        last = max((m._last for m in meters if m._last is not None), default=first)
        completion = sum(p.completion_tokens for p in parts)
        source = max((p.completion_source for p in parts), key=_SOURCES.index)
        counted = sum(m._counted for m in meters)
        if (all(m.streamed for m in meters) and completion >= 2 and counted >= 2
                and last > first):
            tps = (completion - 1) / (last - first)
        else:
            total = end - self._start
            tps = completion / total if total > 0 else 0.0
        head = parts[0]  # generation 0's, when it started (it starts first)
        return PromptUsage(
            ttft_ms=max(0, round((first - self._start) * 1000)),
            prompt_tokens=head.prompt_tokens,
            completion_tokens=completion,
            tps_x1000=round(tps * 1000),
            reported=source == "backend",
            prompt_source=head.prompt_source,
            completion_source=source,
        )
