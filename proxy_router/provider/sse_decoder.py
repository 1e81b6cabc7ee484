"""The model server's `text/event-stream`, decoded from bytes into event payloads.

The provider forwards the payloads as they are, so decoding stops at the bytes of each
`data:` field: a JSON parse happens only for the few events that `needs_parsing()`.
The decoder splits with `bytes.split` (no per-line awaits, no regex): it is on the
per-chunk hot path.
"""

from __future__ import annotations

from typing import Any

from proxy_router import bounded_json

MAX_EVENT_BYTES = 4 * 1024 * 1024
"""Largest SSE event a backend may send: past it the stream is broken, not buffered."""
_DONE = b"[DONE]"
_FINISH_KEY = b'"finish_reason":'


class SSEProtocolError(ValueError):
    """A `data:` payload that is not a JSON object, or an event over `MAX_EVENT_BYTES`."""


class SSEDecoder:
    """Incremental decoder of an OpenAI `text/event-stream`.

    Feed it raw bytes as they arrive; it keeps the partial last line between calls,
    joins multi-line `data:` fields, dispatches an event at each blank line, ignores
    comments (`: ping`) and other fields, and sets `done` at `data: [DONE]`.
    Lines end in LF or CRLF (lone-CR endings are not used by OpenAI-style servers).
    Payloads come back as bytes, unparsed: the caller judges them.
    """

    __slots__ = ("_data", "_partial", "done")

    def __init__(self) -> None:
        self._partial = b""
        self._data: list[bytes] = []
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        """Decode `data`; return the payloads of the complete events it finished, in order."""
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
            line = line.removesuffix(b"\r")
            if line.startswith(b"data:"):
                self._add_data(line)
            elif not line and pending:
                payload = self._take_event()
                if payload is None:
                    break
                out.append(payload)
            # ':' comments and event/id/retry fields carry nothing we use
        return out

    def close(self) -> list[bytes]:
        """End of stream: the payload of an unterminated last event (lenient to sloppy servers)."""
        out: list[bytes] = []
        if self._partial and not self.done:
            tail, self._partial = self._partial, b""
            out = self.feed(tail + b"\n\n")
        if self._data and not self.done:
            payload = self._take_event()
            if payload is not None:
                out.append(payload)
        return out

    def _add_data(self, line: bytes) -> None:
        value = line[5:]
        pending = self._data
        pending.append(value[1:] if value.startswith(b" ") else value)
        if len(pending) > 1 and sum(map(len, pending)) > MAX_EVENT_BYTES:
            raise SSEProtocolError(f"an event exceeds {MAX_EVENT_BYTES} bytes")

    def _take_event(self) -> bytes | None:
        """The pending event's payload; None (and `done` set) for `[DONE]`.

        The lines of a multi-line `data:` field are joined with a space rather than a
        newline: for JSON that is the same document, and the payload stays one SSE line.
        """
        pending = self._data
        payload = pending[0] if len(pending) == 1 else b" ".join(pending)
        pending.clear()
        if payload == _DONE:
            self.done = True
            return None
        return payload


def parse_event(payload: bytes) -> dict[str, Any]:
    """One `data:` payload as a JSON object, else SSEProtocolError."""
    try:
        event = bounded_json.loads(payload, max_bytes=MAX_EVENT_BYTES)
    except ValueError as exc:
        raise SSEProtocolError(f"data is not JSON: {payload[:80]!r}") from exc
    if not isinstance(event, dict):
        raise SSEProtocolError(f"data is not a JSON object: {payload[:80]!r}")
    return event


def check_object_shape(payload: bytes) -> None:
    """The cheap check of a payload left unparsed: it must at least look like `{…}`."""
    if payload[:1] != b"{" or payload[-1:] != b"}":
        raise SSEProtocolError(f"data is not JSON: {payload[:80]!r}")


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
