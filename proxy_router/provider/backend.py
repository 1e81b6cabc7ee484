"""Client for the provider's OpenAI-compatible model server (llama.cpp, vLLM, OpenAI, ...).

This sits on the per-chunk hot path: the stream is read with `readany()`, decoded by
`SSEDecoder` and forwarded as raw event payloads in batches, and one
`aiohttp.ClientSession` is reused so prompts ride kept-alive connections. Failures are
classified so the provider can tell the consumer *why*: the backend is unreachable, it
refused the request, or the stream broke after it had started. A refusal is classified
further (``BackendError.refusal``) so a client gets OpenAI's status and code for it, and a
message of ours (``BackendError.client_message``): backend texts can quote file paths
and URLs (llama-cpp-python puts a traceback in its 500s), so they stay in our log.

A request the provider stops (its task cancelled, its stream closed) closes its
connection rather than returning it to the pool: the server sees the client go and stops
generating, and ``on_abort`` is told. Token counts a stream did not report are asked of
the backend (``prompt_tokens``, ``count_tokens``): see ``provider.usage``.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from proxy_router import bounded_json
from proxy_router.morrpc.protocol import PromptApi
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
COUNT_TIMEOUT_S = 5.0
"""Longest wait for a token count asked after the answer (it delays the stream's trailer)."""
_PROBE_DROPPED = frozenset({"stream", "stream_options", "max_completion_tokens", "n",
                            "logprobs", "top_logprobs"})


class BackendFailure(Exception):
    """Base class: the model server did not produce a complete answer."""


class BackendUnavailable(BackendFailure):
    """No answer started: connection refused, connect timeout, or no first token in time."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"backend unavailable: {reason}")


Refusal = Literal["context_length_exceeded", "invalid_request_error", "rate_limit_exceeded",
                  "backend_overloaded", "failed"]
"""Whose problem a backend's error is: the request's (too long for the context, or
otherwise invalid), a "busy, come back later" (429, 503), or the backend's own (failed)."""

PROVIDER_SIDE_4XX = frozenset({401, 403, 404, 407, 408})
"""4xx statuses about the provider's set-up (its API key, model name, proxy, network),
not about the client's request: those are the backend failing, not a refusal."""
RETRY_AFTER_S = 1
"""Retry-After for a busy backend that named no time."""
MAX_RETRY_AFTER_S = 60
"""Longest Retry-After passed on: the openai SDK ignores longer ones, and so do we."""

_CONTEXT_TEXT = re.compile(
    r"maximum context length|context window of|exceeds? the (?:available )?context"
    r"|context_length_exceeded", re.IGNORECASE)
_CONTEXT_SIZE = re.compile(r"(?:maximum context length is|context window of) (\d+)",
                           re.IGNORECASE)
_PROMPT_SIZE = re.compile(r"(\d+) in the messages|requested tokens \((\d+)\)", re.IGNORECASE)
_VALIDATION_TEXT = re.compile(r"^\d+ validation errors?:", re.IGNORECASE)
"""llama-cpp-python answers an invalid body with HTTP 500 and pydantic's error text."""
_PYDANTIC_ITEM = re.compile(
    r"'loc': \(([^)]*)\), 'msg': (?:'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\")")
_URL_OR_PATH = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+|(?<![\w.])(?:[A-Za-z]:)?[\\/][\w.\-\\/]+"
                          r"|\b\w+\.py\b", re.IGNORECASE)
_MAX_ITEMS = 3


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """What an error body says, as far as it says it (OpenAI, FastAPI or plain text)."""

    message: str
    code: str | None = None
    type: str | None = None
    param: str | None = None
    problems: tuple[tuple[str, str], ...] = ()
    """Validation problems as (field path, pydantic message), when the body lists them."""
    context_size: int | None = None
    prompt_tokens: int | None = None


class BackendError(BackendFailure):
    """The backend answered with an error (non-2xx, or an error object in the stream).

    ``message`` is the backend's own text (for our log); ``client_message`` what a peer
    may be told."""

    def __init__(self, status: int, message: str, *, body: ErrorBody | None = None,
                 retry_after: float | None = None) -> None:
        self.status = status
        self.message = message
        self.body = body or ErrorBody(message)
        self.retry_after = retry_after
        super().__init__(f"backend error {status}: {message}")

    @property
    def refusal(self) -> Refusal:
        status, body = self.status, self.body
        if status == 429:
            return "rate_limit_exceeded"
        if status == 503:
            return "backend_overloaded"
        if status < 400 or status in PROVIDER_SIDE_4XX:
            return "failed"
        if (body.code == "context_length_exceeded" or body.type == "exceed_context_size_error"
                or _CONTEXT_TEXT.search(self.message)):
            return "context_length_exceeded"
        if status < 500 or (status == 500 and _VALIDATION_TEXT.match(self.message)):
            return "invalid_request_error"
        return "failed"

    @property
    def client_status(self) -> int:
        """The HTTP status a client gets for a refusal: a 4xx stays the backend's own; a
        request refused with a 5xx (llama-cpp-python's validation errors) is a 400."""
        refusal = self.refusal
        if refusal in ("rate_limit_exceeded", "backend_overloaded"):
            return self.status
        return self.status if 400 <= self.status < 500 else 400

    def retry_after_s(self) -> int:
        """Whole seconds a busy backend asked for (1 .. 60), ``RETRY_AFTER_S`` if none."""
        if self.retry_after is None or not math.isfinite(self.retry_after):
            return RETRY_AFTER_S
        return min(max(math.ceil(self.retry_after), 1), MAX_RETRY_AFTER_S)

    @property
    def client_message(self) -> str:
        """Our words for the refusal, with the facts the body gave (sizes, fields); no
        backend text, so no path or URL, can reach a client."""
        refusal, body = self.refusal, self.body
        if refusal == "context_length_exceeded":
            return _context_message(body)
        if refusal == "invalid_request_error":
            if body.problems:
                return "the model server refused the request: " + _problems_text(body.problems)
            where = f"; param: {body.param}" if body.param else ""
            return f"the model server refused the request (HTTP {self.status}{where})"
        if refusal == "rate_limit_exceeded":
            return (f"the model server is rate limited; retry after {self.retry_after_s()} s")
        if refusal == "backend_overloaded":
            return (f"the model server is overloaded or not ready; retry after "
                    f"{self.retry_after_s()} s")
        return f"the model server refused the request (HTTP {self.status})"


def _context_message(body: ErrorBody) -> str:
    need = f" ({body.prompt_tokens} tokens)" if body.prompt_tokens else ""
    fit = (f"This model's maximum context length is {body.context_size} tokens, and the "
           f"messages{need} do not fit in it." if body.context_size else
           f"The messages{need} are longer than this model's context window.")
    return fit + " Shorten the messages or start a new conversation."


def _problems_text(problems: tuple[tuple[str, str], ...]) -> str:
    """``field: message`` per field (messages of one field joined), at most a few."""
    by_field: dict[str, list[str]] = {}
    for where, what in problems:
        seen = by_field.setdefault(where, [])
        if what not in seen:
            seen.append(what)
    parts = [f"{where}: {' or '.join(whats)}" if where else " or ".join(whats)
             for where, whats in list(by_field.items())[:_MAX_ITEMS]]
    more = len(by_field) - _MAX_ITEMS
    text = "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
    return _scrub(text)


def _scrub(text: str) -> str:
    """Paths and URLs out, one line, capped: for the little of a backend's text we show."""
    return _URL_OR_PATH.sub("…", " ".join(text.split()))[:_MAX_ERROR_TEXT]


def _field_path(loc: Any) -> str:
    """A pydantic ``loc`` as ``messages.0.role``: no ``body`` prefix and no model class
    names (a union's members are named in it, e.g. ``ChatCompletionRequestUserMessage``)."""
    parts = [str(p).strip().strip("'\"") for p in loc] if isinstance(loc, list | tuple) else []
    kept = [p for p in parts if p and p != "body" and not re.fullmatch(r"[A-Z][A-Za-z0-9]+", p)
            and "[" not in p]
    return ".".join(kept)


def _problems_in(doc: JSON | None, text: str) -> tuple[tuple[str, str], ...]:
    """Validation problems: FastAPI's ``detail`` list, or pydantic's text (llama-cpp-python)."""
    detail = doc.get("detail") if doc is not None else None
    if isinstance(detail, list):
        return tuple((_field_path(item.get("loc")), str(item.get("msg")))
                     for item in detail if isinstance(item, dict) and item.get("msg"))
    if _VALIDATION_TEXT.match(text):
        return tuple((_field_path(loc.split(",")), single or double)
                     for loc, single, double in _PYDANTIC_ITEM.findall(text))
    return ()


def parse_error_body(raw: bytes, fallback: str) -> ErrorBody:
    """Read an error body (OpenAI, FastAPI, llama.cpp or plain text) into an ``ErrorBody``."""
    try:
        doc = bounded_json.loads(raw, max_bytes=_MAX_ERROR_BODY)
    except ValueError:
        doc = None
    doc = doc if isinstance(doc, dict) else None
    message = _message_in(doc) if doc is not None else None
    if message is None:
        message = raw.decode("utf-8", "replace").strip()[:_MAX_ERROR_TEXT] or fallback
    return _error_body(message, doc, doc.get("error") if doc is not None else None)


def _error_body(message: str, doc: JSON | None, err: Any) -> ErrorBody:
    err = err if isinstance(err, dict) else {}
    code = err.get("code")
    kind, param = err.get("type"), err.get("param")
    size = err.get("n_ctx")
    prompt = err.get("n_prompt_tokens")
    size_match = _CONTEXT_SIZE.search(message)
    prompt_match = _PROMPT_SIZE.search(message)
    return ErrorBody(
        message=message,
        code=code if isinstance(code, str) else None,
        type=kind if isinstance(kind, str) else None,
        param=param if isinstance(param, str) and re.fullmatch(r"[\w.\[\]-]{1,64}", param)
        else None,
        problems=_problems_in(doc, message),
        context_size=size if isinstance(size, int) else
        int(size_match.group(1)) if size_match else None,
        prompt_tokens=prompt if isinstance(prompt, int) else
        int(prompt_match.group(1) or prompt_match.group(2)) if prompt_match else None)


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
    return parse_error_body(raw, fallback).message


def _retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (the HTTP-date form is rare from model servers)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


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
        message = str(err.get("message") or err)
        return BackendError(status, message, body=_error_body(message, event, err))
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


ROUTES: dict[PromptApi, str] = {"chat": "/chat/completions", "completions": "/completions",
                                "embeddings": "/embeddings"}
"""The model server's route for each prompt api, under its ``/v1`` base."""


class OpenAIBackend:
    """Streams and non-stream answers (chat, legacy completions, embeddings) from one model
    on an OpenAI-style server."""

    def __init__(
        self,
        api_url: str,
        *,
        model_name: str,
        session: aiohttp.ClientSession,
        api_key: str | None = None,
        timeouts: BackendTimeouts | None = None,
        on_abort: Callable[[], None] | None = None,
    ) -> None:
        """``on_abort``: called once per request closed before its reply's end."""
        base = api_url.rstrip("/")
        if base.endswith("/chat/completions"):
            base = base[: -len("/chat/completions")]
        self.base_url = base
        self.model_name = model_name
        self.timeouts = timeouts or BackendTimeouts()
        self.on_abort = on_abort
        self._urls = {api: base + route for api, route in ROUTES.items()}
        self._url = self._urls["chat"]
        # llama-cpp-python serves its tokenizer beside /v1, not under it
        root = base[: -len("/v1")] if base.endswith("/v1") else base
        self._count_url = root + "/extras/tokenize/count"
        self._count_offset: int | None = None
        """What the tokenizer counts for "" (a BOS token, or 0); None: not learnt yet."""
        self.tokenizer: bool | None = None
        """Whether the backend has llama-cpp-python's tokenizer endpoint (None: untried)."""
        self._session = session
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        t = self.timeouts
        self._client_timeout = aiohttp.ClientTimeout(
            total=t.total, connect=t.connect, sock_connect=t.connect
        )

    def _payload(self, body: Mapping[str, Any], *, stream: bool, api: PromptApi = "chat"
                 ) -> bytes:
        payload = {**body, "model": self.model_name, "stream": stream}
        if api == "embeddings":  # no stream at all there
            payload.pop("stream")
        elif stream:
            options = body.get("stream_options")
            extra = options if isinstance(options, Mapping) else {}
            payload["stream_options"] = {**extra, "include_usage": True}
        else:
            payload.pop("stream_options", None)  # OpenAI rejects it when stream is false
        return json.dumps(payload, separators=(",", ":")).encode()

    async def _post(self, payload: bytes, wait_for: str, api: PromptApi = "chat"
                    ) -> aiohttp.ClientResponse:
        """POST and return a 2xx response; map everything else to BackendFailure."""
        url = self._urls[api]
        try:
            resp = await self._session.post(
                url, data=payload, headers=self._headers, timeout=self._client_timeout
            )
        except TimeoutError:
            raise BackendUnavailable(f"timed out waiting for {wait_for} from {url}") from None
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            why = "connection refused" if refused else str(exc.os_error or exc)
            raise BackendUnavailable(f"cannot connect to {url}: {why}") from None
        except aiohttp.ClientError as exc:
            raise BackendUnavailable(f"{type(exc).__name__} from {url}: {exc}") from None
        if resp.status // 100 != 2:
            try:
                raw = await read_capped(resp.content, _MAX_ERROR_BODY, truncate=True)
            except (aiohttp.ClientError, TimeoutError):
                raw = b""
            finally:
                resp.release()
            body = parse_error_body(raw, resp.reason or "error")
            raise BackendError(resp.status, body.message, body=body,
                               retry_after=_retry_after(resp.headers.get("Retry-After")))
        return resp

    async def stream_events(
        self, body: Mapping[str, Any], meter: UsageMeter | None = None,
        api: PromptApi = "chat",
    ) -> AsyncGenerator[list[bytes], None]:
        """Yield the raw JSON payloads of a streamed chat (or legacy) completion, in batches.

        A batch is every event one read of the response brought (at most
        `_MAX_BATCH_BYTES`), except that the very first event is yielded alone, so the
        first token never waits behind the rest of a burst. `meter` (if given) observes
        each event as it is decoded.

        Raises BackendUnavailable before the first event, BackendError for error
        replies (after yielding the events before the error; also for a stream that
        ends before its first event when the same request unstreamed is refused, see
        `_refusal_behind`), BackendStreamBroken if the stream breaks or ends without
        `[DONE]` or a finish_reason.
        Closing the generator early (or cancelling its reader) closes the connection,
        which stops generation, and counts as an abort unless the reply was complete.
        """
        started = time.monotonic()
        try:
            resp = await self._open_stream(body, api)
        except asyncio.CancelledError:  # aiohttp closes a connection it was cancelled on
            self._aborted()
            raise
        decoder = SSEDecoder()
        events = _EventBatcher(meter)
        clean = False
        ended: BackendStreamBroken | None = None  # ended, or cut, before any event
        try:
            payloads: list[bytes] | None = await self._first_payloads(decoder, resp, started)
            # The rest runs under aiohttp's total timeout.
            while payloads is not None:
                for batch in events.batches(payloads):
                    yield batch
                payloads = await _next_payloads(decoder, resp.content)
            if not decoder.done and not events.finished:
                if events.chunks:
                    raise BackendStreamBroken("stream ended without [DONE]", events.chunks)
                ended = BackendStreamBroken("stream ended without [DONE]", 0)
            else:
                clean = await _drain(resp.content)
        except SSEProtocolError as exc:
            raise BackendStreamBroken(str(exc), events.chunks) from None
        except TimeoutError:
            raise BackendStreamBroken(
                f"total timeout of {self.timeouts.total:g} s exceeded", events.chunks
            ) from None
        except aiohttp.ClientError as exc:
            broken = BackendStreamBroken(f"{type(exc).__name__}: {exc}", events.chunks)
            if events.chunks:
                raise broken from None
            ended = broken
        except (asyncio.CancelledError, GeneratorExit):
            if not (decoder.done or events.finished):
                self._aborted()
            raise
        finally:
            if clean:
                resp.release()
            else:
                resp.close()
        if ended is not None:
            raise await self._refusal_behind(body, ended, api)

    async def _refusal_behind(self, body: Mapping[str, Any], ended: BackendStreamBroken,
                              api: PromptApi) -> BackendFailure:
        """Why a stream ended before its first event: the refusal the same request gets
        unstreamed, else ``ended``.

        llama-cpp-python answers a streamed request it refuses (a prompt over the
        context) with 200 and an empty stream; unstreamed, the same request gets its
        400 ``context_length_exceeded``. So ask that way, for one token: a refused
        request costs the backend nothing, and this runs only on this failure path.
        Asked twice at most: the empty stream's connection went back to the pool at its
        end, and the server closes it (its handler raised), so the first ask may meet
        it closed; the second goes on a new connection."""
        probe = {k: v for k, v in body.items()
                 if k not in ("max_completion_tokens", "stream_options")}
        probe["max_tokens"] = 1
        for _ in range(2):
            try:
                async with asyncio.timeout(self.timeouts.first_token):
                    await self.complete(probe, api)
            except BackendError as exc:
                return exc if exc.refusal != "failed" else ended
            except BackendUnavailable:
                continue
            except (BackendFailure, TimeoutError):
                pass
            break
        return ended

    async def _open_stream(self, body: Mapping[str, Any], api: PromptApi
                           ) -> aiohttp.ClientResponse:
        """POST the streamed request; its headers must come within the first-token deadline."""
        deadline = self.timeouts.first_token
        try:
            async with asyncio.timeout(deadline):
                return await self._post(self._payload(body, stream=True, api=api),
                                        "response headers", api)
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

    def _aborted(self) -> None:
        if self.on_abort is not None:
            self.on_abort()

    async def complete_chat(self, body: Mapping[str, Any]) -> JSON:
        """Return a non-stream chat completion (OpenAI `chat.completion` object)."""
        return await self.complete(body, "chat")

    async def complete(self, body: Mapping[str, Any], api: PromptApi) -> JSON:
        """Return the whole non-stream answer of ``api`` (a `chat.completion`, a
        `text_completion` or an embedding `list`).

        Cancelled, it closes the connection (an abort); llama-cpp-python still finishes
        a non-stream generation it has started, as it never looks at the connection."""
        try:
            resp = await self._post(self._payload(body, stream=False, api=api),
                                    "the answer", api)
        except asyncio.CancelledError:
            self._aborted()
            raise
        try:
            raw = await read_capped(resp.content, MAX_RESPONSE_BYTES)
        except asyncio.CancelledError:
            resp.close()
            self._aborted()
            raise
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

    async def prompt_tokens(self, body: Mapping[str, Any], api: PromptApi = "chat"
                            ) -> int | None:
        """The backend's own prompt count for ``body``, for a stream that reported none:
        the usage of the same request unstreamed for one token (None if it has none).

        A tokenizer endpoint cannot do this: it counts the text it is given, while the
        prompt is the messages rendered by the model's chat template, which only the
        server knows (SmolLM2: 6 tokens of text, 36 in the prompt). The server has just
        evaluated this prompt, so its prefix cache makes the one token cheap. Asked only
        of a server with llama-cpp-python's tokenizer route, i.e. one of our own: a
        hosted API would bill the prompt a second time."""
        if not await self._has_tokenizer():
            return None
        probe = {k: v for k, v in body.items() if k not in _PROBE_DROPPED}
        probe["max_tokens"] = 1
        try:
            async with asyncio.timeout(COUNT_TIMEOUT_S):
                reply = await self.complete(probe, api)
        except (BackendFailure, TimeoutError):
            return None
        usage = reply.get("usage")
        count = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return count if isinstance(count, int) and count >= 0 else None

    async def count_tokens(self, text: str) -> int | None:
        """Tokens of ``text`` by the backend's tokenizer (llama-cpp-python's
        ``/extras/tokenize/count``), without the BOS token it adds; None when the backend
        has no such endpoint (remembered) or it fails."""
        if not await self._has_tokenizer():
            return None
        count = await self._count(text)
        offset = self._count_offset or 0
        return None if count is None else max(0, count - offset)

    async def _has_tokenizer(self) -> bool:
        """Whether the tokenizer route answers (learnt once, with what it counts for "")."""
        if self.tokenizer is None:
            offset = await self._count("")
            if offset is not None:
                self._count_offset = offset
        return bool(self.tokenizer) and self._count_offset is not None

    async def _count(self, text: str) -> int | None:
        payload = json.dumps({"input": text, "model": self.model_name}).encode()
        try:
            async with asyncio.timeout(COUNT_TIMEOUT_S), self._session.post(
                    self._count_url, data=payload, headers=self._headers) as resp:
                if resp.status in (404, 405):
                    self.tokenizer = False
                    return None
                if resp.status != 200:
                    return None
                doc = bounded_json.loads(await read_capped(resp.content, _MAX_ERROR_BODY),
                                         max_bytes=_MAX_ERROR_BODY)
        except (aiohttp.ClientError, TimeoutError, ValueError, BackendError):
            return None
        count = doc.get("count") if isinstance(doc, dict) else None
        if not isinstance(count, int) or count < 0:
            return None
        self.tokenizer = True
        return count


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

    __slots__ = ("_calls", "_observe", "chunks", "finished")

    def __init__(self, meter: UsageMeter | None) -> None:
        self._calls: set[tuple[Any, Any]] = set()
        """(choice index, tool call index) of the calls already named to the client."""
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
            if b'_call' in payload:  # "tool_calls" or "function_call": rare, parsed here
                event = event or parse_event(payload)
                if _name_calls_once(event, self._calls):
                    payload = json.dumps(event, separators=(",", ":")).encode()
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


def _name_calls_once(event: JSON, named: set[tuple[Any, Any]]) -> bool:
    """Strip what a streamed tool call repeats after its first delta (its ``id``,
    ``type`` and function ``name``; a legacy ``function_call``'s ``name``), as OpenAI
    streams them: llama-cpp-python repeats them in every delta, and clients that merge
    deltas (langchain, the SDK's stream helper) read a name "weatherweather...".
    ``named`` holds the calls seen so far; True when the event was changed."""
    changed = False
    for choice in event.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        where = choice.get("index")
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if not isinstance(call, dict):
                continue
            key = (where, call.get("index"))
            if key not in named:
                named.add(key)
                continue
            function = call.get("function")
            for k in ("id", "type"):
                changed |= call.pop(k, None) is not None
            if isinstance(function, dict):
                changed |= function.pop("name", None) is not None
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):
            key = (where, "function_call")
            if key not in named:
                named.add(key)
            else:
                changed |= legacy.pop("name", None) is not None
    return changed
