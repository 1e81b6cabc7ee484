"""SSEDecoder: turns an OpenAI event stream, however it is split into reads, into chunks."""

from __future__ import annotations

import json

import pytest

from proxy_router.provider.backend import SSEDecoder, SSEProtocolError, needs_parsing

CHUNKS = [{"choices": [{"delta": {"content": f"t{i}"}}]} for i in range(3)]
STREAM = (
    b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in CHUNKS) + b"data: [DONE]\n\n"
)


def decode_all(*reads: bytes) -> tuple[list[dict], SSEDecoder]:
    dec = SSEDecoder()
    out: list[dict] = []
    for r in reads:
        out += dec.feed(r)
    return out, dec


def test_whole_stream_in_one_read() -> None:
    events, dec = decode_all(STREAM)
    assert events == CHUNKS and dec.done


def test_a_read_boundary_anywhere_changes_nothing() -> None:
    for cut in range(1, len(STREAM)):
        events, dec = decode_all(STREAM[:cut], STREAM[cut:])
        assert events == CHUNKS and dec.done, f"split at byte {cut}"


def test_byte_by_byte() -> None:
    events, dec = decode_all(*(STREAM[i : i + 1] for i in range(len(STREAM))))
    assert events == CHUNKS and dec.done


def test_an_event_is_emitted_as_soon_as_its_blank_line_arrives() -> None:
    dec = SSEDecoder()
    assert dec.feed(b'data: {"a": 1}\n') == []
    assert dec.feed(b"\n") == [{"a": 1}]


def test_keepalive_comments_and_other_fields_are_ignored() -> None:
    stream = (
        b": ping - 2024-01-01 00:00:00\n\n"
        b"event: message\nid: 7\nretry: 100\n"
        b'data: {"a": 1}\n\n'
        b":\n\n"
        b'data:{"b": 2}\n\n'  # no space after the colon is valid SSE
    )
    events, dec = decode_all(stream)
    assert events == [{"a": 1}, {"b": 2}] and not dec.done


def test_crlf_line_endings() -> None:
    events, dec = decode_all(STREAM.replace(b"\n", b"\r\n"))
    assert events == CHUNKS and dec.done


def test_crlf_split_between_cr_and_lf() -> None:
    events, _ = decode_all(b'data: {"a": 1}\r', b"\n\r", b"\n")
    assert events == [{"a": 1}]


def test_multi_line_data_is_joined_with_newlines() -> None:
    events, _ = decode_all(b'data: {"a":\ndata: 1}\n\n')
    assert events == [{"a": 1}]


def test_nothing_after_done_is_decoded() -> None:
    events, dec = decode_all(b'data: [DONE]\n\ndata: {"late": 1}\n\n')
    assert events == [] and dec.done


def test_close_flushes_an_unterminated_last_event() -> None:
    dec = SSEDecoder()
    assert dec.feed(b'data: {"a": 1}') == []
    assert dec.close() == [{"a": 1}]


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"text"'])
def test_data_that_is_not_a_json_object_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(SSEProtocolError):
        SSEDecoder().feed(b"data: " + payload + b"\n\n")


# --- raw payloads: what the provider forwards without a JSON round trip -------------------


def test_feed_raw_returns_the_payload_bytes_unparsed() -> None:
    dec = SSEDecoder()
    raw = [json.dumps(c, separators=(",", ":")).encode() for c in CHUNKS]
    stream = b"".join(b"data: " + r + b"\n\n" for r in raw) + b"data: [DONE]\n\n"
    assert dec.feed_raw(stream) == raw and dec.done


def test_feed_raw_joins_multi_line_data_with_a_space_so_it_stays_one_sse_line() -> None:
    dec = SSEDecoder()
    assert dec.feed_raw(b'data: {"a":\ndata: 1}\n\n') == [b'{"a": 1}']


def test_feed_raw_keeps_unparseable_data_for_the_caller_to_judge() -> None:
    assert SSEDecoder().feed_raw(b"data: <html>\n\n") == [b"<html>"]


def test_nothing_is_decoded_in_later_reads_after_done() -> None:
    dec = SSEDecoder()
    assert dec.feed_raw(b"data: [DONE]\n\n") == []
    assert dec.feed_raw(b'data: {"late": 1}\n\n') == [] and dec.close_raw() == []


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}', False),
        (b'{"choices":[{"delta":{"content":"x"},"finish_reason": null}]}', False),
        (b'{"choices":[{"delta":{},"finish_reason":"stop"}]}', True),
        (b'{"choices":[{"delta":{},"finish_reason": "length"}]}', True),
        (b'{"choices":[{"finish_reason":null},{"finish_reason":"stop"}]}', True),
        (b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}', True),
        (b'{"choices":[{"delta":{"content":"x"}}],"usage":null}', True),
        (b'{"error":{"message":"context full"}}', True),
        # quotes inside the model's text are escaped: no false hit
        (b'{"choices":[{"delta":{"content":"say \\"usage\\" or \\"error\\""}}]}', False),
    ],
)
def test_needs_parsing_finds_usage_error_and_finish_by_byte_search(
    payload: bytes, expected: bool
) -> None:
    json.loads(payload)  # every case is valid JSON
    assert needs_parsing(payload) is expected
