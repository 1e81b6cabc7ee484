"""Client for the provider's OpenAI-compatible model server (llama.cpp, vLLM, OpenAI, ...).

This sits on the per-chunk hot path: the stream is read with `readany()`, decoded by
`SSEDecoder` and forwarded as raw event payloads in batches, and one
`aiohttp.ClientSession` is reused so prompts ride kept-alive connections. Failures are
classified so the provider can tell the consumer *why*: the backend is unreachable, it
refused the request, or the stream broke after it had started.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from proxy_router import bounded_json
from proxy_router.provider.sse_decoder import (
    SSEDecoder,
    SSEProtocolError,
    check_object_shape,
    needs_parsing,
    parse_event,
)
from proxy_router.provider.usage import UsageMeter

JSON = dict[str, Any]
_DRAIN_AFTER_DONE_S = 1.0  # wait this long for end-of-body so the connection is reused
_MAX_ERROR_TEXT = 500
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


def extract_error_message(raw: bytes, fallback: str) -> str:
    """Pull the human message out of an error body (OpenAI, FastAPI or plain text)."""
    try:
        doc = bounded_json.loads(raw, max_bytes=_MAX_ERROR_BODY)
    except ValueError:
        doc = None
    message = _message_in(doc) if isinstance(doc, dict) else None
    if message is not None:
        return message
    return raw.decode("utf-8", "replace").strip()[:_MAX_ERROR_TEXT] or fallback


def _message_in(doc: JSON) -> str | None:
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
    return None


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

    async def stream_events(
        self, body: Mapping[str, Any], meter: UsageMeter | None = None
    ) -> AsyncGenerator[list[bytes], None]:
        """Yield the raw JSON payloads of a streamed chat completion, in batches.

        A batch is every event one read of the response brought (at most
        `_MAX_BATCH_BYTES`), except that the very first event is yielded alone, so the
        first token never waits behind the rest of a burst. `meter` (if given) observes
        each event as it is decoded.

        Raises BackendUnavailable before the first event, BackendError for error
        replies (after yielding the events before the error), BackendStreamBroken if
        the stream breaks or ends without `[DONE]` or a finish_reason.
        Closing the generator early closes the connection, which stops generation.
        """
        started = time.monotonic()
        resp = await self._open_stream(body)
        decoder = SSEDecoder()
        events = _EventBatcher(meter)
        clean = False
        try:
            payloads: list[bytes] | None = await self._first_payloads(decoder, resp, started)
            # The rest runs under aiohttp's total timeout.
            while payloads is not None:
                for batch in events.batches(payloads):
                    yield batch
                payloads = await _next_payloads(decoder, resp.content)
            if not decoder.done and not events.finished:
                raise BackendStreamBroken("stream ended without [DONE]", events.chunks)
            clean = await _drain(resp.content)
        except SSEProtocolError as exc:
            raise BackendStreamBroken(str(exc), events.chunks) from None
        except TimeoutError:
            raise BackendStreamBroken(
                f"total timeout of {self.timeouts.total:g} s exceeded", events.chunks
            ) from None
        except aiohttp.ClientError as exc:
            raise BackendStreamBroken(f"{type(exc).__name__}: {exc}", events.chunks) from None
        finally:
            if clean:
                resp.release()
            else:
                resp.close()

    async def _open_stream(self, body: Mapping[str, Any]) -> aiohttp.ClientResponse:
        """POST the streamed request; its headers must come within the first-token deadline."""
        deadline = self.timeouts.first_token
        try:
            async with asyncio.timeout(deadline):
                return await self._post(self._payload(body, stream=True), "response headers")
        except TimeoutError:
            raise BackendUnavailable(
                f"no response within {deadline:g} s from {self._url}"
            ) from None

    async def _first_payloads(self, decoder: SSEDecoder, resp: aiohttp.ClientResponse,
                              started: float) -> list[bytes]:
        """Read up to the first event, within what is left of the first-token deadline
        (a backend that accepts the request but never starts is unavailable, not broken)."""
        deadline = self.timeouts.first_token
        try:
            async with asyncio.timeout(max(deadline - (time.monotonic() - started), 0.0)):
                payloads: list[bytes] = []
                while not payloads and not decoder.done:
                    data = await resp.content.readany()
                    if not data:
                        return decoder.close()
                    payloads = decoder.feed(data)
                return payloads
        except TimeoutError:
            raise BackendUnavailable(
                f"no first token within {deadline:g} s from {self._url}"
            ) from None

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


async def _next_payloads(decoder: SSEDecoder, content: aiohttp.StreamReader
                         ) -> list[bytes] | None:
    """The payloads the next read brings (maybe none yet); None once the stream is over."""
    if decoder.done:
        return None
    data = await content.readany()
    if data:
        return decoder.feed(data)
    return decoder.close() or None


class _EventBatcher:
    """Checks each streamed payload and groups them into the batches `stream_events` yields.

    Only the first event and those that `needs_parsing()` are JSON-parsed (errors,
    finish and usage are read from those); the others are forwarded unparsed after a
    shape check, which keeps the per-token cost at a few byte searches.
    """

    __slots__ = ("_observe", "chunks", "finished")

    def __init__(self, meter: UsageMeter | None) -> None:
        self._observe: Callable[[bytes, JSON | None], None] | None = (
            meter.observe_raw if meter is not None else None)
        self.chunks = 0
        self.finished = False
        """Saw a finish_reason: the content is complete even if `[DONE]` goes missing."""

    def batches(self, payloads: list[bytes]) -> Iterator[list[bytes]]:
        """The batches of one read's payloads; the stream's first event goes alone."""
        batch: list[bytes] = []
        size = 0
        for payload in payloads:
            try:
                event = self._check(payload)
            except BackendError:
                if batch:
                    yield batch  # what came before the error still counts
                raise
            self.chunks += 1
            if self._observe is not None:
                self._observe(payload, event)
            batch.append(payload)
            size += len(payload)
            if self.chunks == 1 or size >= _MAX_BATCH_BYTES:
                yield batch
                batch = []
                size = 0
        if batch:
            yield batch

    def _check(self, payload: bytes) -> JSON | None:
        """The parsed event when it needs parsing, else None; BackendError for an error
        event, SSEProtocolError for a payload that is not a JSON object."""
        if self.chunks and not needs_parsing(payload):
            check_object_shape(payload)
            return None
        event = parse_event(payload)
        err = _stream_error(event)
        if err is not None:
            raise err
        if not self.finished:
            self.finished = any(choice.get("finish_reason")
                                for choice in event.get("choices") or ())
        return event
