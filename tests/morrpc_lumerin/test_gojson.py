"""Go encoding/json emulation: escaping, omitempty, the reference's types, decoding rules."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy_router.morrpc.errors import ErrorCode, RpcError
from proxy_router.morrpc.lumerin import (
    PingReq,
    PongRes,
    RpcErrorBody,
    RpcErrorData,
    SessionPromptReq,
    SessionReq,
    StreamStartReq,
    go_marshal,
    go_string,
)

# What Go 1.22+ json.Marshal writes for each string (HTML escaping on).
GO_STRINGS = [
    ("", '""'),
    ("plain", '"plain"'),
    ('q"b\\', '"q\\"b\\\\"'),
    ("\b\f\n\r\t", '"\\b\\f\\n\\r\\t"'),
    ("\x00\x01\x1f", '"\\u0000\\u0001\\u001f"'),
    ("<a href='x'>&</a>", '"\\u003ca href=\'x\'\\u003e\\u0026\\u003c/a\\u003e"'),
    ("\u2028\u2029", '"\\u2028\\u2029"'),
    ("\x7f é 😀 /", '"\x7f é 😀 /"'),  # DEL, non-ASCII and "/" are not escaped
    ("lone \ud800 surrogate", '"lone \ufffd surrogate"'),  # Go: invalid UTF-8 → U+FFFD
]


@pytest.mark.parametrize(("value", "expected"), GO_STRINGS)
def test_strings_are_escaped_as_go_does(value: str, expected: str) -> None:
    assert go_string(value) == expected


@given(st.text())
def test_go_strings_decode_back_to_the_same_text(value: str) -> None:
    assert json.loads(go_string(value)) == value


def test_go_marshal_sorts_map_keys_and_refuses_floats() -> None:
    assert go_marshal({"b": [1, True, None], "a": {"d": "x", "c": False}}) == \
        '{"a":{"c":false,"d":"x"},"b":[1,true,null]}'
    with pytest.raises(TypeError):
        go_marshal({"x": 1.5})


def test_omitempty_signature_vanishes_and_a_plain_one_reads_0x() -> None:
    prompt = SessionPromptReq(session_id="0x" + "ab" * 32, message="m", timestamp=5)
    assert prompt.go_json() == b'{"sessionid":"0x' + b"ab" * 32 + b'","message":"m","timestamp":5}'
    assert PingReq(b"\x01").go_json() == b'{"nonce":"0x01","signature":"0x"}'
    start = StreamStartReq("0x" + "00" * 31 + "01", "s", 0, 0, "audio/wav", 7)
    assert b'"signature":"0x","timestamp":7' in start.go_json()  # no omitempty there either


def test_pong_version_is_omitempty() -> None:
    assert PongRes(b"\x02").go_json() == b'{"nonce":"0x02","signature":"0x"}'
    assert PongRes(b"\x02", "v1").go_json() == b'{"nonce":"0x02","version":"v1","signature":"0x"}'


def test_addresses_and_hashes_go_out_lower_case_and_spend_as_a_string() -> None:
    req = SessionReq(user="0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC", key=b"\x04" + bytes(64),
                     spend=10**30, timestamp=1, bid_id="0x" + "AB" * 32)
    text = req.go_json().decode()
    assert '"user":"0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc"' in text
    assert '"bidid":"0x' + "ab" * 32 + '"' in text
    assert '"spend":"1000000000000000000000000000000"' in text


def test_error_signature_lives_in_data_without_omitempty() -> None:
    body = RpcErrorBody("boom", 400, RpcErrorData(9, b""))
    assert body.go_json() == (b'{"message":"boom","code":400,'
                              b'"data":{"timestamp":9,"signature":"0x"}}')


# -- decoding ---------------------------------------------------------------------------------
def req_obj(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {"user": "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
                               "key": "0x04" + "11" * 64, "spend": "5", "timestamp": 17,
                               "bidid": "0x" + "22" * 32, "signature": "0x" + "33" * 65}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def test_go_tolerances_are_mirrored() -> None:
    assert SessionReq.from_obj(req_obj(spend=7)).spend == 7  # lib.BigInt from a number
    assert SessionReq.from_obj(req_obj(key="04" + "11" * 64)).key == b"\x04" + b"\x11" * 64
    assert SessionReq.from_obj(req_obj(key="0X" + "AB")).key == b"\xab"  # upper-case prefix
    assert SessionReq.from_obj(req_obj(key="0x123")).key == b"\x01\x23"  # odd: left-padded
    assert SessionReq.from_obj(req_obj(extra={"ignored": True})).timestamp == 17
    assert SessionReq.from_obj(req_obj(user="0X3C44CDDDB6A900FA2B585DD299E03D12FA4293BC")).user \
        == "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


@pytest.mark.parametrize("changes", [
    {"user": "3c44cdddb6a900fa2b585dd299e03d12fa4293bc"},  # hexutil: 0x prefix required
    {"user": "0x3c44"}, {"user": 5}, {"user": None}, {"user": "0x" + "00" * 20},
    {"bidid": "0x" + "22" * 31}, {"bidid": "0x" + "zz" * 32}, {"bidid": ...},
    {"key": "0x"}, {"key": "nothex"}, {"key": 1234}, {"key": "0x" + "11" * 66}, {"key": ""},
    {"spend": "-1"}, {"spend": "1e3"}, {"spend": 1.5}, {"spend": True}, {"spend": "1" * 79},
    {"timestamp": "17"}, {"timestamp": -1}, {"timestamp": 2**64}, {"timestamp": True},
    {"timestamp": 1.0}, {"timestamp": 0}, {"timestamp": ...},
    {"signature": "0x" + "33" * 66}, {"signature": ...},  # validate:"required"
])
def test_malformed_fields_are_bad_requests(changes: dict[str, object]) -> None:
    with pytest.raises(RpcError) as err:
        SessionReq.from_obj(req_obj(**changes))
    assert err.value.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("obj", [None, [], "x", 1, [{"user": "0x"}]])
def test_params_must_be_an_object(obj: object) -> None:
    with pytest.raises(RpcError):
        SessionReq.from_obj(obj)


def test_strings_are_bounded() -> None:
    with pytest.raises(RpcError):
        PongRes.from_obj({"nonce": "0x01", "version": "v" * 257, "signature": "0x01"})


@given(st.text(min_size=1, max_size=50), st.integers(1, 2**64 - 1))
def test_a_decoded_struct_re_marshals_to_its_wire_form(message: str, ts: int) -> None:
    """The verifier's round trip: Go bytes → decode → Go bytes is the identity."""
    prompt = SessionPromptReq("0x" + "0f" * 32, message, ts, b"\x01" * 65)
    wire = prompt.go_json()
    assert SessionPromptReq.from_obj(orjson.loads(wire)).go_json() == wire
