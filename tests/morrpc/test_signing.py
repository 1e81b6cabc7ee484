"""Frame signatures are Ethereum personal_sign signatures over keccak(canonical JSON)."""

from __future__ import annotations

import time

import pytest
from Crypto.Hash import keccak as pycryptodome_keccak
from eth_account import Account
from eth_account.messages import encode_defunct
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_router.morrpc import ErrorCode, RpcError, Signer, canonical_json
from proxy_router.morrpc.canonical import CanonicalJsonError
from proxy_router.morrpc.signing import (
    keccak256,
    public_key_to_address,
    recover_frame_public_key,
    recover_frame_signer,
)

_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

FRAME = {"id": 7, "method": "session.prompt", "params": {"sessionId": "0xab", "n": 3}}


def body_digest(frame: dict) -> bytes:
    return keccak256(canonical_json({k: v for k, v in frame.items() if k != "signature"}))


def test_keccak256_is_ethereums_keccak_not_nist_sha3() -> None:
    assert keccak256(b"").hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")


@given(st.binary(max_size=600))
def test_keccak256_agrees_with_pycryptodome(data: bytes) -> None:
    assert keccak256(data) == pycryptodome_keccak.new(digest_bits=256, data=data).digest()


def test_eth_account_recovers_the_signer(consumer: Signer) -> None:
    signed = consumer.sign_frame(FRAME)
    recovered = Account.recover_message(encode_defunct(primitive=body_digest(signed)),
                                        signature=signed["signature"])
    assert recovered == consumer.address


def test_signature_is_byte_identical_to_eth_account(consumer: Signer) -> None:
    signed = consumer.sign_frame(FRAME)
    expected = consumer.account.sign_message(encode_defunct(primitive=body_digest(signed)))
    assert signed["signature"] == "0x" + bytes(expected.signature).hex()


def test_recover_frame_signer_returns_the_checksum_address(consumer: Signer) -> None:
    assert recover_frame_signer(consumer.sign_frame(FRAME)) == consumer.address


def test_recovered_public_key_is_the_signers(provider: Signer) -> None:
    key = recover_frame_public_key(provider.sign_frame(FRAME))
    assert key == provider.public_key
    assert public_key_to_address(key) == provider.address


def test_key_order_of_the_frame_does_not_matter(consumer: Signer) -> None:
    signed = consumer.sign_frame(FRAME)
    reordered = dict(reversed(list(signed.items())))
    assert recover_frame_signer(reordered) == consumer.address


def test_v_is_27_or_28(consumer: Signer) -> None:
    for i in range(8):
        assert int(consumer.sign_frame({**FRAME, "id": i})["signature"][-2:], 16) in (27, 28)


def test_adds_timestamp_in_seconds_and_a_16_byte_nonce(consumer: Signer) -> None:
    signed = consumer.sign_frame(FRAME)
    assert abs(signed["timestamp"] - time.time()) < 5
    assert isinstance(signed["timestamp"], int)
    assert signed["nonce"].startswith("0x") and len(signed["nonce"]) == 34
    assert consumer.sign_frame(FRAME)["nonce"] != signed["nonce"]
    assert "signature" not in FRAME  # the input is not mutated


def test_keeps_a_given_timestamp_and_nonce(consumer: Signer) -> None:
    signed = consumer.sign_frame({**FRAME, "timestamp": 5, "nonce": "0x01"})
    assert (signed["timestamp"], signed["nonce"]) == (5, "0x01")


def test_resigning_replaces_the_old_signature(consumer: Signer, stranger: Signer) -> None:
    resigned = stranger.sign_frame(consumer.sign_frame(FRAME))
    assert recover_frame_signer(resigned) == stranger.address


@settings(max_examples=25)
@given(field=st.sampled_from(["id", "method", "params", "timestamp", "nonce"]))
def test_any_tampered_field_recovers_someone_else(consumer: Signer, field: str) -> None:
    signed = consumer.sign_frame(FRAME)
    signed[field] = {"tampered": True}
    assert recover_frame_signer(signed) != consumer.address


def test_added_field_recovers_someone_else(consumer: Signer) -> None:
    signed = consumer.sign_frame(FRAME)
    assert recover_frame_signer({**signed, "extra": 1}) != consumer.address


@pytest.mark.parametrize("signature", [None, "", "0x1234", "0x" + "zz" * 65, 42])
def test_malformed_signatures_are_bad_signature(consumer: Signer, signature: object) -> None:
    signed = {**consumer.sign_frame(FRAME), "signature": signature}
    with pytest.raises(RpcError) as err:
        recover_frame_signer(signed)
    assert err.value.code is ErrorCode.BAD_SIGNATURE


def test_v_0_or_1_is_refused(consumer: Signer) -> None:
    signed = consumer.sign_frame(FRAME)
    raw = bytes.fromhex(signed["signature"][2:])
    signed["signature"] = "0x" + (raw[:64] + bytes((raw[64] - 27,))).hex()
    with pytest.raises(RpcError, match="27 or 28"):
        recover_frame_signer(signed)


def test_high_s_malleated_signature_is_refused(consumer: Signer) -> None:
    signed = consumer.sign_frame(FRAME)
    raw = bytes.fromhex(signed["signature"][2:])
    high_s = (_N - int.from_bytes(raw[32:64], "big")).to_bytes(32, "big")
    flipped_v = bytes((55 - raw[64],))  # 27 <-> 28
    signed["signature"] = "0x" + (raw[:32] + high_s + flipped_v).hex()
    with pytest.raises(RpcError, match="high s"):
        recover_frame_signer(signed)


def test_signing_a_float_is_a_local_programming_error(consumer: Signer) -> None:
    with pytest.raises(CanonicalJsonError):
        consumer.sign_frame({"params": {"temperature": 0.7}})


def test_a_received_float_is_bad_request(consumer: Signer) -> None:
    signed = consumer.sign_frame(FRAME)
    signed["params"] = {"temperature": 0.7}
    with pytest.raises(RpcError) as err:
        recover_frame_signer(signed)
    assert err.value.code is ErrorCode.BAD_REQUEST


def test_from_key_accepts_hex_with_or_without_prefix() -> None:
    key = "44" * 32
    assert Signer.from_key(key).address == Signer.from_key("0x" + key).address
    assert Signer.from_key(key).address == Account.from_key(key).address
