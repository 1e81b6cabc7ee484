"""SSEDecoder: an OpenAI event stream, however it is split into reads, becomes event payloads.

The payloads are the `data:` bytes, unparsed (the provider forwards them as they are);
`needs_parsing` picks the few that must be parsed, `parse_event` parses one.
"""

from __future__ import annotations

import json

import pytest

from proxy_router.provider.sse_decoder import (
    MAX_EVENT_BYTES,
    SSEDecoder,
    SSEProtocolError,
    check_object_shape,
    needs_parsing,
    parse_event,
)

PAYLOADS = [json.dumps({"choices": [{"delta": {"content": f"t{i}"}}]}).encode() for i in range(3)]
STREAM = b"".join(b"data: " + p + b"\n\n" for p in PAYLOADS) + b"data: [DONE]\n\n"


def decode_all(*reads: bytes) -> tuple[list[bytes], SSEDecoder]:
    dec = SSEDecoder()
    out: list[bytes] = []
    for r in reads:
        out += dec.feed(r)
    return out, dec


def test_whole_stream_in_one_read() -> None:
    payloads, dec = decode_all(STREAM)
    assert payloads == PAYLOADS and dec.done


def test_a_read_boundary_anywhere_changes_nothing() -> None:
    for cut in range(1, len(STREAM)):
        payloads, dec = decode_all(STREAM[:cut], STREAM[cut:])
        assert payloads == PAYLOADS and dec.done, f"split at byte {cut}"


def test_byte_by_byte() -> None:
    payloads, dec = decode_all(*(STREAM[i : i + 1] for i in range(len(STREAM))))
    assert payloads == PAYLOADS and dec.done


def test_an_event_is_emitted_as_soon_as_its_blank_line_arrives() -> None:
    dec = SSEDecoder()
    assert dec.feed(b'data: {"a": 1}\n') == []
    assert dec.feed(b"\n") == [b'{"a": 1}']


def test_keepalive_comments_and_other_fields_are_ignored() -> None:
    stream = (
        b": ping - 2024-01-01 00:00:00\n\n"
        b"event: message\nid: 7\nretry: 100\n"
        b'data: {"a": 1}\n\n'
        b":\n\n"
        b'data:{"b": 2}\n\n'  # no space after the colon is valid SSE
    )
    payloads, dec = decode_all(stream)
    assert payloads == [b'{"a": 1}', b'{"b": 2}'] and not dec.done


def test_crlf_line_endings() -> None:
    payloads, dec = decode_all(STREAM.replace(b"\n", b"\r\n"))
    assert payloads == PAYLOADS and dec.done


def test_crlf_split_between_cr_and_lf() -> None:
    payloads, _ = decode_all(b'data: {"a": 1}\r', b"\n\r", b"\n")
    assert payloads == [b'{"a": 1}']


def test_multi_line_data_is_joined_with_a_space_so_it_stays_one_sse_line() -> None:
    payloads, _ = decode_all(b'data: {"a":\ndata: 1}\n\n')
    assert payloads == [b'{"a": 1}'] and json.loads(payloads[0]) == {"a": 1}


def test_nothing_after_done_is_decoded_in_the_same_read_or_later() -> None:
    dec = SSEDecoder()
    assert dec.feed(b'data: [DONE]\n\ndata: {"late": 1}\n\n') == [] and dec.done
    assert dec.feed(b'data: {"later": 1}\n\n') == [] and dec.close() == []


def test_close_flushes_an_unterminated_last_event() -> None:
    dec = SSEDecoder()
    assert dec.feed(b'data: {"a": 1}') == []
    assert dec.close() == [b'{"a": 1}']


def test_close_flushes_data_lines_missing_their_blank_line() -> None:
    dec = SSEDecoder()
    assert dec.feed(b'data: {"a": 1}\n') == []
    assert dec.close() == [b'{"a": 1}']


def test_close_recognises_an_unterminated_done() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: [DONE]") == []
    assert dec.close() == [] and dec.done


def test_unparseable_data_is_kept_for_the_caller_to_judge() -> None:
    assert SSEDecoder().feed(b"data: <html>\n\n") == [b"<html>"]


def test_an_event_line_longer_than_the_limit_is_a_protocol_error() -> None:
    with pytest.raises(SSEProtocolError, match="event line exceeds"):
        SSEDecoder().feed(b"data: " + b"x" * MAX_EVENT_BYTES)


def test_an_event_of_many_lines_longer_than_the_limit_is_a_protocol_error() -> None:
    line = b"data: " + b"x" * (MAX_EVENT_BYTES // 2) + b"\n"
    with pytest.raises(SSEProtocolError, match="event exceeds"):
        SSEDecoder().feed(line * 3)


def test_parse_event_returns_the_json_object() -> None:
    assert parse_event(b'{"a": [1]}') == {"a": [1]}


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"text"'])
def test_data_that_is_not_a_json_object_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(SSEProtocolError):
        parse_event(payload)


@pytest.mark.parametrize(("payload", "ok"), [(b'{"a":1}', True), (b"<html>", False),
                                             (b'{"a":1', False), (b"", False)])
def test_an_unparsed_payload_must_look_like_an_object(payload: bytes, ok: bool) -> None:
    if ok:
        check_object_shape(payload)
    else:
        with pytest.raises(SSEProtocolError, match="not JSON"):
            check_object_shape(payload)


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
