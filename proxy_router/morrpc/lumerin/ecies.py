"""go-ethereum's ``crypto/ecies`` (ECIES_AES128_SHA256), the reference's payload encryption.

The Go provider encrypts every completion chunk (and model error) to the
consumer's wallet public key with ``ecies.Encrypt(rand, pub, m, nil, nil)``:

* a fresh ephemeral secp256k1 key R; ``z`` = x-coordinate of ECDH(R, pub), 32 bytes;
* ``K = concatKDF_SHA256(z, s1, 32)`` (NIST SP 800-56: SHA-256(counter₃₂ᵦₑ ‖ z ‖ s1),
  counter from 1), ``Ke = K[:16]``, ``Km = SHA-256(K[16:])`` (geth hashes the MAC key);
* ``em = iv ‖ AES-128-CTR(Ke, iv, m)`` with a random 16-byte IV;
* ``tag = HMAC-SHA-256(Km, em ‖ s2)``;
* output ``R (65 bytes, 0x04 uncompressed) ‖ em ‖ tag``: 113 bytes of overhead.

On the wire the result is lower-case hex *without* ``0x`` (``lib.EncryptString``).
ECDH runs in libsecp256k1 (coincurve), AES and HMAC in ``cryptography``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Protocol

import coincurve
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import ErrorCode, RpcError
from ..signing import ecdh_x

PUBLIC_KEY_SIZE = 65
IV_SIZE = 16
TAG_SIZE = 32
OVERHEAD = PUBLIC_KEY_SIZE + IV_SIZE + TAG_SIZE
_HEX = re.compile("[0-9a-fA-F]*")


class KeyAgreement(Protocol):
    """Anything that does ECDH with its private key (``morrpc.signing.Signer``, ...)."""

    def shared_secret(self, peer_public_key: bytes) -> bytes: ...


class _SecretKey:
    """A raw 32-byte secret as a ``KeyAgreement``."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        coincurve.PrivateKey(secret)  # validates the range
        self._secret = secret

    def shared_secret(self, peer_public_key: bytes) -> bytes:
        return ecdh_x(self._secret, peer_public_key)


def _derive(z: bytes, s1: bytes) -> tuple[bytes, bytes]:
    k = hashlib.sha256(b"\x00\x00\x00\x01" + z + s1).digest()  # one round gives 32 bytes
    return k[:16], hashlib.sha256(k[16:]).digest()


def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    ctx = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return ctx.update(data) + ctx.finalize()


def encrypt(public_key: bytes, plaintext: bytes, *, s1: bytes = b"", s2: bytes = b"",
            ephemeral_secret: bytes | None = None, iv: bytes | None = None) -> bytes:
    """ECIES ciphertext of ``plaintext`` for ``public_key`` (33 or 65 bytes).

    ``ephemeral_secret``/``iv`` are for test vectors only: reusing either leaks data.
    Raises ``BAD_REQUEST`` for a public key that is not on the curve.
    """
    try:
        recipient = coincurve.PublicKey(public_key).format(compressed=False)
    except (ValueError, TypeError) as exc:
        raise RpcError(ErrorCode.BAD_REQUEST, "not a secp256k1 public key") from exc
    ephemeral = coincurve.PrivateKey(ephemeral_secret)  # None: a fresh random key
    iv = os.urandom(IV_SIZE) if iv is None else iv
    if len(iv) != IV_SIZE:
        raise ValueError("iv must be 16 bytes")
    ke, km = _derive(ecdh_x(ephemeral.secret, recipient), s1)
    em = iv + _ctr(ke, iv, plaintext)
    tag = hmac.new(km, em + s2, hashlib.sha256).digest()
    return ephemeral.public_key.format(compressed=False) + em + tag


def decrypt(key: KeyAgreement | bytes, ciphertext: bytes, *, s1: bytes = b"",
            s2: bytes = b"") -> bytes:
    """Plaintext of a geth ECIES ciphertext; ``DECRYPTION_FAILED`` when it is not ours.

    ``key`` is a ``KeyAgreement`` (a wallet ``Signer``) or a raw 32-byte secret.
    """
    agree = _SecretKey(key) if isinstance(key, bytes) else key
    if len(ciphertext) < OVERHEAD or ciphertext[0] != 0x04:
        raise RpcError(ErrorCode.DECRYPTION_FAILED, "not an ECIES ciphertext")
    ephemeral = ciphertext[:PUBLIC_KEY_SIZE]
    em = ciphertext[PUBLIC_KEY_SIZE:-TAG_SIZE]
    try:
        z = agree.shared_secret(ephemeral)
    except (ValueError, TypeError) as exc:
        raise RpcError(ErrorCode.DECRYPTION_FAILED, "ephemeral key is not on the curve") from exc
    ke, km = _derive(z, s1)
    expected = hmac.new(km, em + s2, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, ciphertext[-TAG_SIZE:]):
        raise RpcError(ErrorCode.DECRYPTION_FAILED, "ECIES tag mismatch")
    return _ctr(ke, em[:IV_SIZE], em[IV_SIZE:])


def encrypt_hex(public_key: bytes, plaintext: bytes) -> str:
    """``lib.EncryptString``: the ciphertext as lower-case hex, no ``0x``."""
    return encrypt(public_key, plaintext).hex()


def decrypt_hex(key: KeyAgreement | bytes, text: str, *, max_bytes: int = 64 << 20) -> bytes:
    """Decrypt hex text (``0x`` optional: chunks are read as ``lib.HexString``)."""
    digits = text[2:] if text[:2] in ("0x", "0X") else text
    if len(digits) > 2 * max_bytes:
        raise RpcError(ErrorCode.PAYLOAD_TOO_LARGE, "ciphertext too large")
    if len(digits) % 2 or not _HEX.fullmatch(digits):
        raise RpcError(ErrorCode.DECRYPTION_FAILED, "ciphertext is not hex")
    return decrypt(key, bytes.fromhex(digits))
