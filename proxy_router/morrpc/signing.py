"""Frame signatures: EIP-191 ``personal_sign`` over keccak256 of canonical JSON.

A frame's signature covers every field except ``signature`` itself, so the
envelope (id, method, timestamp, nonce, ...) is authenticated together with the
params. Hashing first and signing the 32-byte digest keeps the signed message
fixed-size, and EIP-191 makes a frame signature unusable as a transaction.

Signing and recovery call libsecp256k1 through coincurve directly: eth_account
costs ~250 µs to sign and ~180 µs to recover, coincurve ~32 µs and ~50 µs.
Both use RFC 6979 nonces and low-s normalisation, so the signatures are
byte-identical to eth_account's (the tests pin this), and anything that speaks
Ethereum (ethers, web3, eth_account) can verify our frames.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from typing import Any

import coincurve
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from .canonical import CanonicalJsonError, canonical_json
from .errors import ErrorCode, RpcError

_EIP191_PREFIX_32 = b"\x19Ethereum Signed Message:\n32"
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = _SECP256K1_N // 2
NONCE_BYTES = 16


try:  # C keccak (safe-pysha3, an eth-hash backend): ~2 µs a call against ~7 µs
    from sha3 import keccak_256 as _keccak_256

    def keccak256(data: bytes) -> bytes:
        """Ethereum's keccak-256 (not NIST SHA3-256)."""
        digest: bytes = _keccak_256(data).digest()
        return digest

except ImportError:  # pragma: no cover - same digest, pycryptodome's per-call overhead
    from Crypto.Hash import keccak as _keccak

    def keccak256(data: bytes) -> bytes:
        """Ethereum's keccak-256 (not NIST SHA3-256)."""
        return _keccak.new(digest_bits=256, data=data).digest()



def new_nonce() -> str:
    """A fresh random frame nonce: 16 bytes as 0x-hex."""
    return "0x" + os.urandom(NONCE_BYTES).hex()


def frame_digest(frame: dict[str, Any]) -> bytes:
    """The 32-byte EIP-191 hash a frame signature signs (``signature`` excluded).

    Raises ``CanonicalJsonError`` for values with no canonical form (floats, ...).
    """
    body = {k: v for k, v in frame.items() if k != "signature"}
    return keccak256(_EIP191_PREFIX_32 + keccak256(canonical_json(body)))


class Signer:
    """A wallet key that signs frames; also does ECDH for end-to-end encryption."""

    __slots__ = ("_key", "account", "address", "public_key")

    def __init__(self, account: LocalAccount) -> None:
        self.account = account
        self._key = coincurve.PrivateKey(bytes(account.key))
        self.public_key: bytes = self._key.public_key.format(compressed=False)
        self.address: str = account.address

    @classmethod
    def from_key(cls, private_key: str | bytes) -> Signer:
        """Load from a 32-byte key (raw or hex, with or without 0x)."""
        return cls(Account.from_key(private_key))

    @classmethod
    def generate(cls) -> Signer:
        """A fresh random wallet (tests, throwaway identities)."""
        return cls(Account.create())

    def __repr__(self) -> str:
        return f"Signer({self.address})"

    def sign_digest(self, digest: bytes) -> bytes:
        """65-byte r‖s‖v signature of a 32-byte hash, v ∈ {27, 28}."""
        sig = self._key.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes((sig[64] + 27,))

    def sign_frame(self, frame: dict[str, Any]) -> dict[str, Any]:
        """A signed copy of ``frame``, adding ``timestamp``/``nonce`` when missing.

        Raises ``CanonicalJsonError`` if the frame holds floats or other unsignable values.
        """
        out = {k: v for k, v in frame.items() if k != "signature"}
        out.setdefault("timestamp", int(time.time()))
        out.setdefault("nonce", new_nonce())
        out["signature"] = "0x" + self.sign_digest(frame_digest(out)).hex()
        return out

    def shared_secret(self, peer_public_key: bytes) -> bytes:
        """Raw ECDH: x-coordinate of ``key · peer`` (32 bytes)."""
        return ecdh_x(self._key.secret, peer_public_key)


def ecdh_x(secret: bytes, peer_public_key: bytes) -> bytes:
    """x-coordinate of ``secret · peer_public_key`` — the standard ECDH shared secret."""
    point = coincurve.PublicKey(peer_public_key).multiply(secret)
    return point.format(compressed=True)[1:]


def recover_frame_public_key(frame: dict[str, Any]) -> bytes:
    """The 65-byte uncompressed key that signed ``frame``; ``BAD_SIGNATURE`` if none."""
    sig = _parse_signature(frame.get("signature"))
    try:
        digest = frame_digest(frame)
    except CanonicalJsonError as exc:
        raise RpcError(ErrorCode.BAD_REQUEST, f"frame is not canonical JSON: {exc}") from exc
    try:
        key = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
    except ValueError as exc:
        raise RpcError(ErrorCode.BAD_SIGNATURE, "signature does not recover a key") from exc
    return key.format(compressed=False)


def recover_frame_signer(frame: dict[str, Any]) -> str:
    """Checksum address of the key that signed ``frame``."""
    return public_key_to_address(recover_frame_public_key(frame))


@lru_cache(maxsize=4096)
def public_key_to_address(public_key: bytes) -> str:
    """Checksum address of a public key (cached: the same peers sign every frame)."""
    if len(public_key) != 65:
        public_key = coincurve.PublicKey(public_key).format(compressed=False)
    return to_checksum_address(keccak256(public_key[1:])[-20:])


def _parse_signature(value: Any) -> bytes:
    """0x-hex r‖s‖v (v ∈ {27,28}, low s) → coincurve's r‖s‖recid."""
    if not isinstance(value, str) or len(value) != 132 or not value.startswith("0x"):
        raise RpcError(ErrorCode.BAD_SIGNATURE, "signature must be 65 bytes of 0x-hex")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError as exc:
        raise RpcError(ErrorCode.BAD_SIGNATURE, "signature is not hex") from exc
    v = raw[64]
    if v not in (27, 28):
        raise RpcError(ErrorCode.BAD_SIGNATURE, "signature v must be 27 or 28")
    if int.from_bytes(raw[32:64], "big") > _HALF_N:
        raise RpcError(ErrorCode.BAD_SIGNATURE, "signature s is not canonical (high s)")
    return raw[:64] + bytes((v - 27,))
