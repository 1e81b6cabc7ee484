"""End-to-end encryption: ECDH(session key, provider wallet) → HKDF → AES-256-GCM per direction."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from proxy_router.morrpc import (
    CipherCache,
    ErrorCode,
    Role,
    RpcError,
    SessionKey,
    Signer,
    derive_cipher,
    recover_frame_public_key,
)
from proxy_router.morrpc.crypto import NONCE_SIZE, TAG_SIZE, parse_public_key

AAD = b"request 1 chunk 0"


@pytest.fixture(scope="module")
def pair() -> tuple[SessionKey, Signer]:
    return SessionKey.generate(), Signer.from_key("0x" + "11" * 32)


def ciphers(pair: tuple[SessionKey, Signer]):  # type: ignore[no-untyped-def]
    session, provider = pair
    consumer_side = derive_cipher(session, provider.public_key, Role.CONSUMER)
    provider_side = derive_cipher(provider, session.public_key, Role.PROVIDER)
    return consumer_side, provider_side


def test_consumer_to_provider_round_trip(pair: tuple[SessionKey, Signer]) -> None:
    consumer, provider = ciphers(pair)
    assert provider.open(consumer.seal(b"prompt", AAD), AAD) == b"prompt"


def test_provider_to_consumer_round_trip(pair: tuple[SessionKey, Signer]) -> None:
    consumer, provider = ciphers(pair)
    assert consumer.open(provider.seal(b"completion", AAD), AAD) == b"completion"


def test_directions_use_different_keys(pair: tuple[SessionKey, Signer]) -> None:
    """A sender cannot open its own message: the reverse direction has its own key."""
    consumer, provider = ciphers(pair)
    with pytest.raises(RpcError):
        consumer.open(consumer.seal(b"x", AAD), AAD)
    with pytest.raises(RpcError):
        provider.open(provider.seal(b"x", AAD), AAD)


def test_provider_key_recovered_from_a_signed_frame_works(pair: tuple[SessionKey, Signer]) -> None:
    session, provider = pair
    recovered = recover_frame_public_key(provider.sign_frame({"id": 1, "result": {}}))
    consumer = derive_cipher(session, recovered, Role.CONSUMER)
    provider_side = derive_cipher(provider, session.public_key_hex, Role.PROVIDER)
    assert provider_side.open(consumer.seal(b"hi", AAD), AAD) == b"hi"


def test_a_third_party_key_cannot_decrypt(pair: tuple[SessionKey, Signer]) -> None:
    session, _ = pair
    consumer, _ = ciphers(pair)
    eavesdropper = derive_cipher(SessionKey.generate(), session.public_key, Role.PROVIDER)
    with pytest.raises(RpcError) as err:
        eavesdropper.open(consumer.seal(b"secret", AAD), AAD)
    assert err.value.code is ErrorCode.DECRYPTION_FAILED


def test_ciphertext_is_nonce_body_tag_and_never_repeats(pair: tuple[SessionKey, Signer]) -> None:
    consumer, _ = ciphers(pair)
    first, second = consumer.seal(b"same", AAD), consumer.seal(b"same", AAD)
    assert len(first) == NONCE_SIZE + 4 + TAG_SIZE
    assert first != second and first[:NONCE_SIZE] != second[:NONCE_SIZE]


@pytest.mark.parametrize("position", [0, NONCE_SIZE, NONCE_SIZE + 2, -1])
def test_any_flipped_byte_fails(pair: tuple[SessionKey, Signer], position: int) -> None:
    consumer, provider = ciphers(pair)
    sealed = bytearray(consumer.seal(b"hello", AAD))
    sealed[position] ^= 0x01
    with pytest.raises(RpcError) as err:
        provider.open(bytes(sealed), AAD)
    assert err.value.code is ErrorCode.DECRYPTION_FAILED


def test_other_aad_fails(pair: tuple[SessionKey, Signer]) -> None:
    """A chunk moved to another request or position does not open."""
    consumer, provider = ciphers(pair)
    with pytest.raises(RpcError):
        provider.open(consumer.seal(b"hello", AAD), b"request 1 chunk 1")


def test_truncated_ciphertext_fails(pair: tuple[SessionKey, Signer]) -> None:
    _, provider = ciphers(pair)
    with pytest.raises(RpcError, match="too short"):
        provider.open(b"\x00" * (NONCE_SIZE + TAG_SIZE - 1), AAD)


@given(payload=st.binary(max_size=4096), aad=st.binary(max_size=64))
def test_any_payload_round_trips(pair: tuple[SessionKey, Signer], payload: bytes,
                                 aad: bytes) -> None:
    consumer, provider = ciphers(pair)
    assert provider.open(consumer.seal(payload, aad), aad) == payload
    assert consumer.open(provider.seal(payload, aad), aad) == payload


def test_ecdh_is_standard_x_coordinate_like_cryptography(pair: tuple[SessionKey, Signer]) -> None:
    session, provider = pair
    theirs = ec.derive_private_key(int.from_bytes(session.secret, "big"), ec.SECP256K1())
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), provider.public_key)
    expected = theirs.exchange(ec.ECDH(), peer)
    assert session.shared_secret(provider.public_key) == expected
    assert provider.shared_secret(session.public_key) == expected


def test_session_key_persists_as_hex_without_leaking_in_repr() -> None:
    key = SessionKey.generate()
    restored = SessionKey.from_hex(key.to_hex())
    assert restored == key and restored.public_key == key.public_key
    assert key.secret.hex() not in repr(key)
    assert key.public_key_hex.startswith("0x04") and len(key.public_key) == 65


def test_cache_derives_once_per_peer_and_is_bounded(pair: tuple[SessionKey, Signer]) -> None:
    _, provider = pair
    cache = CipherCache(maxsize=2)
    peer = SessionKey.generate()
    first = cache.get(provider, peer.public_key, Role.PROVIDER)
    assert cache.get(provider, peer.public_key_hex, Role.PROVIDER) is first
    for _ in range(5):
        cache.get(provider, SessionKey.generate().public_key, Role.PROVIDER)
    assert len(cache) == 2


@pytest.mark.parametrize("value", [b"\x04" + b"\x00" * 64, "0x1234", "not hex", b""])
def test_invalid_public_keys_are_bad_request(value: bytes | str) -> None:
    with pytest.raises(RpcError) as err:
        parse_public_key(value)
    assert err.value.code is ErrorCode.BAD_REQUEST


def test_compressed_and_uncompressed_keys_derive_the_same_cipher(
        pair: tuple[SessionKey, Signer]) -> None:
    session, provider = pair
    compressed = parse_public_key(session.public_key)
    a = derive_cipher(provider, compressed, Role.PROVIDER)
    b = derive_cipher(provider, session.public_key, Role.PROVIDER)
    consumer = derive_cipher(session, provider.public_key, Role.CONSUMER)
    sealed = consumer.seal(b"x", AAD)
    assert a.open(sealed, AAD) == b.open(sealed, AAD) == b"x"
