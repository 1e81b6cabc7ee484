"""Client for the provider's OpenAI-compatible model server (llama.cpp, vLLM, OpenAI, ...).

This sits on the per-chunk hot path, so the stream is read with `readany()` and split
with `bytes.split` (no per-line awaits, no regex), and one `aiohttp.ClientSession` is
reused so prompts ride kept-alive connections. Failures are classified so the provider
can tell the consumer *why*: the backend is unreachable, it refused the request, or the
stream broke after it had started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from proxy_router import bounded_json

JSON = dict[str, Any]
_DONE = b"[DONE]"
_DRAIN_AFTER_DONE_S = 1.0  # wait this long for end-of-body so the connection is reused
_MAX_ERROR_TEXT = 500
MAX_EVENT_BYTES = 4 * 1024 * 1024
"""Largest SSE event a backend may send: past it the stream is broken, not buffered."""
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
"""Largest non-stream completion read from a backend."""
_MAX_ERROR_BODY = 64 * 1024
_MAX_BATCH_BYTES = 64 * 1024  # one sealed chunk of raw events (frames are capped at 8 MiB)


class BackendFailure(Exception):
    """Base class: the model server did not produce a complete answer."""


class BackendUnavailable(BackendFailure):
    """No answer started: connection refused, connect timeout, or no first token in time."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"backend unavailable: {reason}")


class BackendError(BackendFailure):
    """The backend answered with an error (non-2xx, or an error object in the stream)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"backend error {status}: {message}")


class BackendStreamBroken(BackendFailure):
    """The stream started but ended early: dropped connection, total timeout, bad data."""

    def __init__(self, reason: str, chunks: int) -> None:
        self.reason = reason
        self.chunks = chunks
        super().__init__(f"backend stream broken after {chunks} chunks: {reason}")


@dataclass(frozen=True, slots=True)
class BackendTimeouts:
    """Seconds. `first_token` covers request start to first chunk; `total` the whole reply."""

    connect: float = 5.0
    first_token: float = 90.0
    total: float = 240.0


class SSEProtocolError(ValueError):
    """A `data:` payload that is not a JSON object."""


class SSEDecoder:
    """Incremental decoder of an OpenAI `text/event-stream`.

    Feed it raw bytes as they arrive; it keeps the partial last line between calls,
    joins multi-line `data:` fields, dispatches an event at each blank line, ignores
    comments (`: ping`) and other fields, and sets `done` at `data: [DONE]`.
    Lines end in LF or CRLF (lone-CR endings are not used by OpenAI-style servers).

    `feed_raw()` returns each event's `data` payload as bytes, unparsed (the provider
    forwards them as they are); `feed()` returns them as parsed JSON objects.
    """

    __slots__ = ("_data", "_partial", "done")

    def __init__(self) -> None:
        self._partial = b""
        self._data: list[bytes] = []
        self.done = False

    def feed_raw(self, data: bytes) -> list[bytes]:
        """Decode `data`; return the payloads of the complete events it finished, in order.

        The lines of a multi-line `data:` field are joined with a space rather than a
        newline: for JSON that is the same document, and the payload stays one SSE line.
        """
        if self.done:
            return []
        if self._partial:
            data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_EVENT_BYTES:
            raise SSEProtocolError(f"an event line exceeds {MAX_EVENT_BYTES} bytes")
        out: list[bytes] = []
        pending = self._data
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if pending:
                    payload = pending[0] if len(pending) == 1 else b" ".join(pending)
                    pending.clear()
                    if payload == _DONE:
                        self.done = True
                        break
                    out.append(payload)
            elif line.startswith(b"data:"):
                value = line[5:]
                pending.append(value[1:] if value.startswith(b" ") else value)
                if len(pending) > 1 and sum(map(len, pending)) > MAX_EVENT_BYTES:
                    raise SSEProtocolError(f"an event exceeds {MAX_EVENT_BYTES} bytes")
            # ':' comments and event/id/retry fields carry nothing we use
        return out

    def close_raw(self) -> list[bytes]:
        """End of stream: the payload of an unterminated last event (lenient to sloppy servers)."""
        out: list[bytes] = []
        if self._partial and not self.done:
            tail, self._partial = self._partial, b""
            out = self.feed_raw(tail + b"\n\n")
        if self._data and not self.done:
            payload = b" ".join(self._data)
            self._data.clear()
            if payload == _DONE:
                self.done = True
            else:
                out.append(payload)
        return out

    def feed(self, data: bytes) -> list[JSON]:
        """Decode `data`; return the complete events it finished, parsed, in order."""
        return [parse_event(p) for p in self.feed_raw(data)]

    def close(self) -> list[JSON]:
        """End of stream: dispatch an unterminated last event (lenient to sloppy servers)."""
        return [parse_event(p) for p in self.close_raw()]


def parse_event(payload: bytes) -> JSON:
    """One `data:` payload as a JSON object, else SSEProtocolError."""
    try:
        event = bounded_json.loads(payload, max_bytes=MAX_EVENT_BYTES)
    except ValueError as exc:
        raise SSEProtocolError(f"data is not JSON: {payload[:80]!r}") from exc
    if not isinstance(event, dict):
        raise SSEProtocolError(f"data is not a JSON object: {payload[:80]!r}")
    return event


_FINISH_KEY = b'"finish_reason":'


def needs_parsing(payload: bytes) -> bool:
    """Whether a streamed event may matter beyond its bytes (found by byte search).

    True for events that may carry a usage object, an error, or a non-null
    `finish_reason`; the ordinary token chunk (by far the most common) is False and
    is forwarded without a JSON round trip. A quote inside a JSON string is escaped,
    so `"usage"` etc. cannot match text inside the model's content.
    """
    if b'"usage"' in payload or b'"error"' in payload:
        return True
    i = payload.find(_FINISH_KEY)
    while i >= 0:
        i += len(_FINISH_KEY)
        if not payload[i : i + 6].lstrip().startswith(b"null"):
            return True
        i = payload.find(_FINISH_KEY, i)
    return False


def extract_error_message(raw: bytes, fallback: str) -> str:
    """Pull the human message out of an error body (OpenAI, FastAPI or plain text)."""
    try:
        doc = bounded_json.loads(raw, max_bytes=_MAX_ERROR_BODY)
    except ValueError:
        text = raw.decode("utf-8", "replace").strip()
        return text[:_MAX_ERROR_TEXT] or fallback
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
        for key in ("message", "detail"):
            value = doc.get(key)
            if isinstance(value, str):
                return value
            if value is not None:
                return json.dumps(value)[:_MAX_ERROR_TEXT]
    return raw.decode("utf-8", "replace").strip()[:_MAX_ERROR_TEXT] or fallback


def _stream_error(event: JSON) -> BackendError | None:
    """An `{"error": ...}` event in place of a chunk (llama.cpp, vLLM do this mid-stream)."""
    err = event.get("error")
    if err is None or "choices" in event:
        return None
    if isinstance(err, dict):
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else 500
        return BackendError(status, str(err.get("message") or err))
    return BackendError(500, str(err))


async def read_capped(content: aiohttp.StreamReader, limit: int, *,
                      truncate: bool = False) -> bytes:
    """A body read to its end but never past ``limit`` bytes: cut there (``truncate``),
    or ``BackendError`` (a reply that large is not one we will hold in memory)."""
    buf = bytearray()
    while len(buf) <= limit:
        chunk = await content.read(min(65536, limit + 1 - len(buf)))
        if not chunk:
            return bytes(buf)
        buf += chunk
    if truncate:
        return bytes(buf[:limit])
    raise BackendError(502, f"backend reply exceeds {limit} bytes")


class OpenAIBackend:
    """Streams and non-stream chat completions from one model on an OpenAI-style server."""

    def __init__(
        self,
        api_url: str,
        *,
        model_name: str,
        session: aiohttp.ClientSession,
        api_key: str | None = None,
        timeouts: BackendTimeouts | None = None,
    ) -> None:
        base = api_url.rstrip("/")
        if base.endswith("/chat/completions"):
            base = base[: -len("/chat/completions")]
        self.base_url = base
        self.model_name = model_name
        self.timeouts = timeouts or BackendTimeouts()
        self._url = base + "/chat/completions"
        self._session = session
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        t = self.timeouts
        self._client_timeout = aiohttp.ClientTimeout(
            total=t.total, connect=t.connect, sock_connect=t.connect
        )

    def _payload(self, body: Mapping[str, Any], *, stream: bool) -> bytes:
        payload = {**body, "model": self.model_name, "stream": stream}
        if stream:
            options = body.get("stream_options")
            extra = options if isinstance(options, Mapping) else {}
            payload["stream_options"] = {**extra, "include_usage": True}
        else:
            payload.pop("stream_options", None)  # OpenAI rejects it when stream is false
        return json.dumps(payload, separators=(",", ":")).encode()

    async def _post(self, payload: bytes, wait_for: str) -> aiohttp.ClientResponse:
        """POST and return a 2xx response; map everything else to BackendFailure."""
        try:
            resp = await self._session.post(
                self._url, data=payload, headers=self._headers, timeout=self._client_timeout
            )
        except TimeoutError:
            raise BackendUnavailable(f"timed out waiting for {wait_for} from {self._url}") from None
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            why = "connection refused" if refused else str(exc.os_error or exc)
            raise BackendUnavailable(f"cannot connect to {self._url}: {why}") from None
        except aiohttp.ClientError as exc:
            raise BackendUnavailable(f"{type(exc).__name__} from {self._url}: {exc}") from None
        if resp.status // 100 != 2:
            try:
                raw = await read_capped(resp.content, _MAX_ERROR_BODY, truncate=True)
            except (aiohttp.ClientError, TimeoutError):
                raw = b""
            finally:
                resp.release()
            raise BackendError(resp.status, extract_error_message(raw, resp.reason or "error"))
        return resp

    async def stream_chat(self, body: Mapping[str, Any]) -> AsyncIterator[JSON]:
        """Yield each chunk of a streamed chat completion, parsed, usage chunk included.

        Raises BackendUnavailable before the first chunk, BackendError for error
        replies, BackendStreamBroken if the stream ends without `[DONE]`/finish.
        Closing the iterator early closes the connection, which stops generation.
        (The provider's hot path uses `stream_events`, which skips the JSON parsing.)
        """
        chunks = 0
        async with contextlib.aclosing(self.stream_events(body)) as batches:
            async for batch in batches:
                for payload in batch:
                    try:
                        event = parse_event(payload)
                    except SSEProtocolError as exc:
                        raise BackendStreamBroken(str(exc), chunks) from None
                    chunks += 1
                    yield event

    async def stream_events(
        self, body: Mapping[str, Any], meter: UsageMeter | None = None
    ) -> AsyncGenerator[list[bytes], None]:
        """Yield the raw JSON payloads of a streamed chat completion, in batches.

        A batch is every event one read of the response brought (at most
        `_MAX_BATCH_BYTES`), except that the very first event is yielded alone, so the
        first token never waits behind the rest of a burst. Only the events that
        `needs_parsing()` (and the first) are JSON-parsed: errors, finish and usage
        are checked on those; the others are only checked to look like a JSON object.
        `meter` (if given) observes each event as it is decoded.
        Failures as for `stream_chat`.
        """
        started = time.monotonic()
        first_deadline = self.timeouts.first_token
        try:
            async with asyncio.timeout(first_deadline):
                resp = await self._post(self._payload(body, stream=True), "response headers")
        except TimeoutError:
            raise BackendUnavailable(
                f"no response within {first_deadline:g} s from {self._url}"
            ) from None
        decoder = SSEDecoder()
        content = resp.content
        chunks = 0
        finished = False  # saw a finish_reason: content complete even if [DONE] goes missing
        clean = False
        try:
            # Phase 1: the first chunk, under the first-token deadline.
            payloads: list[bytes] = []
            try:
                remaining = first_deadline - (time.monotonic() - started)
                async with asyncio.timeout(max(remaining, 0.0)):
                    while not payloads and not decoder.done:
                        data = await content.readany()
                        if not data:
                            payloads = decoder.close_raw()
                            break
                        payloads = decoder.feed_raw(data)
            except TimeoutError:
                raise BackendUnavailable(
                    f"no first token within {first_deadline:g} s from {self._url}"
                ) from None
            # Phase 2: the rest, under aiohttp's total timeout.
            observe = meter.observe_raw if meter is not None else None
            while True:
                batch: list[bytes] = []
                size = 0
                for payload in payloads:
                    if chunks == 0 or needs_parsing(payload):
                        event = parse_event(payload)
                        err = _stream_error(event)
                        if err is not None:
                            if batch:
                                yield batch  # what came before the error still counts
                            raise err
                        if not finished:
                            for choice in event.get("choices") or ():
                                if choice.get("finish_reason"):
                                    finished = True
                    elif payload[:1] != b"{" or payload[-1:] != b"}":
                        raise SSEProtocolError(f"data is not JSON: {payload[:80]!r}")
                    else:
                        event = None
                    chunks += 1
                    if observe is not None:
                        observe(payload, event)
                    batch.append(payload)
                    size += len(payload)
                    if chunks == 1 or size >= _MAX_BATCH_BYTES:
                        yield batch
                        batch = []
                        size = 0
                if batch:
                    yield batch
                if decoder.done:
                    break
                data = await content.readany()
                if not data:
                    payloads = decoder.close_raw()
                    if payloads:
                        continue
                    break
                payloads = decoder.feed_raw(data)
            if not decoder.done and not finished:
                raise BackendStreamBroken("stream ended without [DONE]", chunks)
            clean = await _drain(content)
        except SSEProtocolError as exc:
            raise BackendStreamBroken(str(exc), chunks) from None
        except TimeoutError:
            raise BackendStreamBroken(
                f"total timeout of {self.timeouts.total:g} s exceeded", chunks
            ) from None
        except aiohttp.ClientError as exc:
            raise BackendStreamBroken(f"{type(exc).__name__}: {exc}", chunks) from None
        finally:
            if clean:
                resp.release()
            else:
                resp.close()

    async def complete_chat(self, body: Mapping[str, Any]) -> JSON:
        """Return a non-stream chat completion (OpenAI `chat.completion` object)."""
        resp = await self._post(self._payload(body, stream=False), "the completion")
        try:
            raw = await read_capped(resp.content, MAX_RESPONSE_BYTES)
        except BackendError:
            resp.close()
            raise
        except TimeoutError:
            resp.close()
            raise BackendUnavailable(
                f"no complete answer within {self.timeouts.total:g} s from {self._url}"
            ) from None
        except aiohttp.ClientError as exc:
            resp.close()
            raise BackendUnavailable(f"{type(exc).__name__} from {self._url}: {exc}") from None
        resp.release()
        try:
            doc = bounded_json.loads(raw, max_bytes=MAX_RESPONSE_BYTES)
        except ValueError:
            raise BackendError(502, "backend returned invalid JSON") from None
        if not isinstance(doc, dict):
            raise BackendError(502, "backend returned a non-object JSON body")
        err = _stream_error(doc)
        if err is not None:
            raise err
        return doc


async def _drain(content: aiohttp.StreamReader) -> bool:
    """After [DONE], read to end of body so the kept-alive connection can be reused."""
    try:
        async with asyncio.timeout(_DRAIN_AFTER_DONE_S):
            while await content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        return False
    return True


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


_TEXT_KEY_END = b'content":"'


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

    Create it right before sending the request, `observe()` each streamed chunk
    (or `observe_response()` a non-stream reply), then read `result()`.
    Token counts come from the backend's usage object when it sends one; otherwise
    completion tokens are the content-bearing deltas (llama.cpp sends one token per
    chunk) and prompt tokens the `prompt_tokens_estimate` given here.
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
        """Account one streamed chunk."""
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
        span = (self._last - first) if self._last is not None else 0.0
        if n >= 2 and self._counted >= 2 and span > 0:
            tps = (n - 1) / span
        else:
            total = end - self._start
            tps = n / total if total > 0 else 0.0
        return PromptUsage(
            ttft_ms=max(0, round((first - self._start) * 1000)),
            prompt_tokens=prompt if isinstance(prompt, int) else self._prompt_estimate,
            completion_tokens=n,
            tps_x1000=round(tps * 1000),
            reported=reported,
        )
