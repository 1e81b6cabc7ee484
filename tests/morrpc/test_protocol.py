"""Error codes and frame shapes are a stable wire contract."""

from __future__ import annotations

import json

import pytest

from proxy_router.morrpc import ErrorCode, RpcError, RpcTimeout, RpcUnavailable
from proxy_router.morrpc.protocol import (
    chunk_aad_prefix,
    chunk_text,
    decode_frame,
    is_request_id,
    payload_aad,
)


def test_codes_are_their_own_names_on_the_wire() -> None:
    for code in ErrorCode:
        assert code.value == code.name
    assert json.dumps({"code": ErrorCode.NO_CAPACITY}) == '{"code": "NO_CAPACITY"}'


def test_error_round_trips_through_its_wire_form() -> None:
    err = RpcError(ErrorCode.SESSION_EXPIRED, "ended at 5", {"endsAt": 5})
    back = RpcError.from_dict(json.loads(json.dumps(err.to_dict())))
    assert (back.code, back.message, back.data) == (ErrorCode.SESSION_EXPIRED, "ended at 5",
                                                    {"endsAt": 5})


def test_error_without_data_omits_it() -> None:
    assert RpcError(ErrorCode.INTERNAL, "x").to_dict() == {"code": "INTERNAL", "message": "x"}


def test_unknown_codes_from_newer_peers_are_kept_verbatim() -> None:
    assert RpcError.from_dict({"code": "SOMETHING_NEW", "message": "m"}).code == "SOMETHING_NEW"


@pytest.mark.parametrize("error", [None, "boom", {"message": "no code"}, {"code": 5}])
def test_malformed_error_objects_become_bad_request(error: object) -> None:
    assert RpcError.from_dict(error).code is ErrorCode.BAD_REQUEST


def test_unavailability_is_a_connection_error_and_timeouts_are_both() -> None:
    assert issubclass(RpcUnavailable, ConnectionError)
    assert issubclass(RpcTimeout, RpcUnavailable) and issubclass(RpcTimeout, TimeoutError)
    assert not issubclass(RpcUnavailable, RpcError)


def test_chunk_frame_is_plain_json() -> None:
    assert json.loads(chunk_text(json.dumps("a\"b"), 3, "AAAA")) == {
        "id": "a\"b", "seq": 3, "chunk": "AAAA"}


def test_aads_bind_request_id_nonce_and_kind() -> None:
    aads = {payload_aad(1, "0x01"), payload_aad(2, "0x01"), payload_aad(1, "0x02"),
            chunk_aad_prefix(1, "0x01"), chunk_aad_prefix("1", "0x01")}
    assert len(aads) == 5


@pytest.mark.parametrize("text", ["", "[1]", "not json", b"\xff"])
def test_non_object_frames_are_bad_request(text: str | bytes) -> None:
    with pytest.raises(RpcError) as err:
        decode_frame(text)
    assert err.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(("value", "ok"), [(0, True), (2**53 - 1, True), ("abc", True),
                                           (-1, False), (True, False), ("", False),
                                           ("x" * 129, False), (None, False), (1.5, False)])
def test_request_ids(value: object, ok: bool) -> None:
    assert is_request_id(value) is ok
