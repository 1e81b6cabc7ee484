"""End-to-end encryption of prompts and completions between consumer and provider.

Key agreement: the consumer makes a fresh secp256k1 ``SessionKey`` per session
and the provider uses its wallet key, so the consumer needs nothing but the
provider's public key, which it recovers from any frame the provider signed.
ECDH (x-coordinate) → HKDF-SHA256 with a fixed protocol salt and an ``info``
that binds the direction and both public keys → one AES-256-GCM key per
direction. Separate keys mean the two sides can never produce the same
(key, nonce) pair even if their nonce generators coincide.

Nonces are 12 random bytes per message rather than a counter. A session key is
persisted and a consumer may reconnect or restart mid-session; a counter would
then have to be persisted atomically with every message or risk reuse, which
breaks GCM completely. Random nonces need no state: a session (≤ 7 days) sends
far fewer than the 2**32 messages per key NIST SP 800-38D allows for them.

Wire form of a sealed message: ``nonce (12) ‖ ciphertext ‖ tag (16)``. The AAD
is chosen by the caller (see ``protocol.chunk_aad``): it binds the request and
chunk position so ciphertexts cannot be reordered, replayed or moved.

Derived keys are cached per (role, local key, peer key): ECDH and HKDF run once
per session, never per chunk.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import coincurve
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ErrorCode, RpcError
from .signing import ecdh_x

HKDF_SALT = b"mor-rpc/1 e2e aes-256-gcm"
NONCE_SIZE = 12
TAG_SIZE = 16


class Role(StrEnum):
    """Which end of the session this process is."""

    CONSUMER = "consumer"
    PROVIDER = "provider"


class KeyAgreement(Protocol):
    """A private key that can do ECDH (``SessionKey`` or ``signing.Signer``)."""

    @property
    def public_key(self) -> bytes: ...

    def shared_secret(self, peer_public_key: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SessionKey:
    """The consumer's per-session secp256k1 key; ``to_hex`` for persistence."""

    secret: bytes = field(repr=False)
    public_key: bytes = field(init=False)

    def __post_init__(self) -> None:
        key = coincurve.PrivateKey(self.secret)  # validates range
        object.__setattr__(self, "public_key", key.public_key.format(compressed=False))

    @classmethod
    def generate(cls) -> SessionKey:
        return cls(coincurve.PrivateKey().secret)

    @classmethod
    def from_hex(cls, value: str) -> SessionKey:
        return cls(bytes.fromhex(value.removeprefix("0x")))

    def to_hex(self) -> str:
        return "0x" + self.secret.hex()

    @property
    def public_key_hex(self) -> str:
        """65-byte uncompressed public key as 0x-hex: what ``session.request`` sends."""
        return "0x" + self.public_key.hex()

    def shared_secret(self, peer_public_key: bytes) -> bytes:
        return ecdh_x(self.secret, peer_public_key)


class E2ECipher:
    """One side's view of a session: seals with its send key, opens with its receive key."""

    __slots__ = ("_recv", "_send")

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send = AESGCM(send_key)
        self._recv = AESGCM(recv_key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """``nonce ‖ ciphertext ‖ tag`` for the peer."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._send.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """Plaintext from the peer; ``DECRYPTION_FAILED`` if tampered, misbound or foreign."""
        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise RpcError(ErrorCode.DECRYPTION_FAILED, "ciphertext too short")
        try:
            return self._recv.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
        except InvalidTag as exc:
            raise RpcError(ErrorCode.DECRYPTION_FAILED, "authentication tag mismatch") from exc


def parse_public_key(value: bytes | str) -> bytes:
    """33/65-byte key (raw or 0x-hex) → validated compressed form; ``BAD_REQUEST`` if invalid."""
    try:
        raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else value
        return coincurve.PublicKey(raw).format(compressed=True)
    except (ValueError, TypeError) as exc:
        raise RpcError(ErrorCode.BAD_REQUEST, "not a secp256k1 public key") from exc


def derive_cipher(local: KeyAgreement, peer_public_key: bytes | str, role: Role) -> E2ECipher:
    """ECDH + HKDF → the cipher for ``role`` (uncached; prefer ``CipherCache``)."""
    peer = parse_public_key(peer_public_key)
    mine = coincurve.PublicKey(local.public_key).format(compressed=True)
    consumer, provider = (mine, peer) if role is Role.CONSUMER else (peer, mine)
    secret = local.shared_secret(peer)
    c2p = _hkdf(secret, b"mor-rpc/1 consumer->provider" + consumer + provider)
    p2c = _hkdf(secret, b"mor-rpc/1 provider->consumer" + consumer + provider)
    return E2ECipher(c2p, p2c) if role is Role.CONSUMER else E2ECipher(p2c, c2p)


class CipherCache:
    """Bounded LRU of derived ciphers keyed by (role, local key, peer key)."""

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[Role, bytes, bytes], E2ECipher] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, local: KeyAgreement, peer_public_key: bytes | str, role: Role) -> E2ECipher:
        peer = parse_public_key(peer_public_key)
        key = (role, local.public_key, peer)
        cipher = self._items.get(key)
        if cipher is None:
            cipher = derive_cipher(local, peer, role)
            self._items[key] = cipher
            if len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return cipher


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=HKDF_SALT, info=info).derive(secret)
