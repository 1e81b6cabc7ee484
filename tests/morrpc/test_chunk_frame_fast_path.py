"""The consumer reads chunk frames without json.loads: same result, or a fallback."""

from __future__ import annotations

import json

import pytest

from proxy_router.morrpc.client import _chunk_frame
from proxy_router.morrpc.protocol import chunk_text, decode_frame


@pytest.mark.parametrize("rid", [1, 7, 123456789])
@pytest.mark.parametrize("seq", [0, 1, 255, 10**9])
def test_a_chunk_frame_reads_as_json_would(rid: int, seq: int) -> None:
    text = chunk_text(json.dumps(rid), seq, "QUJD+/0x==")
    assert _chunk_frame(text) == decode_frame(text)


@pytest.mark.parametrize("text", [
    chunk_text(json.dumps("str-id"), 1, "QUJD"),  # string ids: the general decoder
    '{"id":1,"result":{"chunks":3}}',
    '{"id":1,"seq":2,"chunk":"a","extra":"b"}',
    '{"id":1,"seq":-2,"chunk":"a"}',
    '{"id":1,"seq":"2","chunk":"a"}',
    '{"id":١,"seq":2,"chunk":"a"}',  # a non-ASCII digit
    '{"seq":2,"id":1,"chunk":"a"}',
])
def test_anything_else_falls_back_to_the_json_decoder(text: str) -> None:
    assert _chunk_frame(text) is None
