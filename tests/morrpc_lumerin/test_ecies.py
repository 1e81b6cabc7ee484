"""geth ECIES: ours against ecies-geth (npm), both directions, and against tampering."""

from __future__ import annotations

import os

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_router.morrpc.errors import ErrorCode, RpcError
from proxy_router.morrpc.lumerin import ecies
from proxy_router.morrpc.signing import Signer

from . import node_ecies

MESSAGES = [b"", b"zuck", b'"[DONE]"', bytes(range(256)) * 3, "é😀\u2028".encode(),
            os.urandom(70_000)]


def test_ecies_geth_decrypts_ours() -> None:
    keys = [coincurve.PrivateKey() for _ in MESSAGES]
    ours = [ecies.encrypt(k.public_key.format(compressed=False), m)
            for k, m in zip(keys, MESSAGES, strict=True)]
    theirs = node_ecies.run([{"op": "decrypt", "key": k.secret.hex(), "data": c.hex()}
                             for k, c in zip(keys, ours, strict=True)])
    assert theirs == [m.hex() for m in MESSAGES]


def test_we_decrypt_ecies_geth() -> None:
    keys = [coincurve.PrivateKey() for _ in MESSAGES]
    theirs = node_ecies.run([{"op": "encrypt", "pub": k.public_key.format(compressed=False).hex(),
                              "msg": m.hex()} for k, m in zip(keys, MESSAGES, strict=True)])
    for key, message, ct in zip(keys, MESSAGES, theirs, strict=True):
        assert len(ct) // 2 == len(message) + ecies.OVERHEAD
        assert ecies.decrypt(key.secret, bytes.fromhex(ct)) == message
        assert ecies.decrypt_hex(key.secret, ct) == message
        assert ecies.decrypt_hex(key.secret, "0x" + ct) == message  # lib.HexString form


def test_deterministic_encryption_matches_ecies_geth_byte_for_byte() -> None:
    key = coincurve.PrivateKey()
    pub = key.public_key.format(compressed=False)
    eph, iv = os.urandom(32), os.urandom(16)
    [theirs] = node_ecies.run([{"op": "encrypt", "pub": pub.hex(), "msg": b"hello".hex(),
                                "ephem": eph.hex(), "iv": iv.hex()}])
    assert ecies.encrypt(pub, b"hello", ephemeral_secret=eph, iv=iv).hex() == theirs


def test_a_wallet_signer_decrypts_without_exposing_its_key() -> None:
    signer = Signer.generate()
    ct = ecies.encrypt_hex(signer.public_key, b"secret")
    assert ecies.decrypt_hex(signer, ct) == b"secret"
    # a compressed recipient key encrypts to the same point
    compressed = coincurve.PublicKey(signer.public_key).format(compressed=True)
    assert ecies.decrypt(signer, ecies.encrypt(compressed, b"x")) == b"x"


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=16), st.binary(max_size=16))
def test_round_trip_with_shared_info(message: bytes, s1: bytes, s2: bytes) -> None:
    key = coincurve.PrivateKey()
    ct = ecies.encrypt(key.public_key.format(), message, s1=s1, s2=s2)
    assert ecies.decrypt(key.secret, ct, s1=s1, s2=s2) == message
    if s1 or s2:
        with pytest.raises(RpcError):
            ecies.decrypt(key.secret, ct)


def test_every_flipped_bit_is_detected() -> None:
    key = coincurve.PrivateKey()
    ct = bytearray(ecies.encrypt(key.public_key.format(), b"attack at dawn"))
    for i in range(len(ct)):
        for bit in (0x01, 0x80):
            bad = bytearray(ct)
            bad[i] ^= bit
            with pytest.raises(RpcError) as err:
                ecies.decrypt(key.secret, bytes(bad))
            assert err.value.code == ErrorCode.DECRYPTION_FAILED


@pytest.mark.parametrize("data", [b"", b"\x04" * 112, b"\x02" + bytes(200), os.urandom(113)])
def test_garbage_is_refused_not_crashed_on(data: bytes) -> None:
    with pytest.raises(RpcError) as err:
        ecies.decrypt(coincurve.PrivateKey().secret, data)
    assert err.value.code == ErrorCode.DECRYPTION_FAILED


@pytest.mark.parametrize("text", ["zz", "abc", "aa bb", "0x0g"])
def test_bad_hex_is_refused(text: str) -> None:
    with pytest.raises(RpcError) as err:
        ecies.decrypt_hex(coincurve.PrivateKey().secret, text)
    assert err.value.code == ErrorCode.DECRYPTION_FAILED


def test_another_key_cannot_decrypt() -> None:
    ct = ecies.encrypt(coincurve.PrivateKey().public_key.format(), b"for someone else")
    with pytest.raises(RpcError):
        ecies.decrypt(coincurve.PrivateKey().secret, ct)


def test_an_invalid_recipient_key_is_a_bad_request() -> None:
    with pytest.raises(RpcError) as err:
        ecies.encrypt(b"\x04" + bytes(64), b"x")
    assert err.value.code == ErrorCode.BAD_REQUEST
