"""Signatures of the reference wire, and the two signed blobs that go on chain.

Two schemes, and mixing them up is the classic interop bug:

* **message signatures** (every params/result struct, and signed errors):
  ``crypto.Sign(keccak256(json), key)`` — the *raw* keccak of the Go JSON, no
  EIP-191 prefix, 65 bytes ``r ‖ s ‖ v`` with **v ∈ {0, 1}**. The verifier checks
  it against a known public key (``crypto.VerifySignature``: low s, v ignored) or
  recovers an address (``crypto.Ecrecover``, ping only).
* **blob signatures** (``approvalSig`` of session.request, ``signedReport`` of
  session.report): ``lib.SignEthMessageV2`` = EIP-191 ``personal_sign`` over the
  32-byte ``keccak256(blob)`` — ``keccak256("\\x19Ethereum Signed Message:\\n32" ‖
  keccak256(blob))`` — with **v ∈ {27, 28}**, what the contract's ECDSA check wants.

The blobs are ABI encodings:
approval ``(bytes32 bidId, uint256 chainId, address user, uint128 timestamp)`` and
report ``(bytes32 sessionId, uint256 chainId, uint128 timestamp, uint32 tpsScaled1000,
uint32 ttftMs, uint32 inputTokens, uint32 outputTokens)``; both timestamps are the
message's **milliseconds**.

RFC 6979 nonces and low-s normalisation (libsecp256k1 via coincurve, as in geth)
make our signatures byte-identical to the reference's for the same input.
"""

from __future__ import annotations

from dataclasses import dataclass

import coincurve
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from eth_utils.address import to_checksum_address

from ..errors import ErrorCode, RpcError
from ..signing import Signer, keccak256, public_key_to_address

SIGNATURE_SIZE = 65
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_EIP191_32 = b"\x19Ethereum Signed Message:\n32"
APPROVAL_TYPES = ("bytes32", "uint256", "address", "uint128")
REPORT_TYPES = ("bytes32", "uint256", "uint128", "uint32", "uint32", "uint32", "uint32")


def sign_message_digest(signer: Signer, digest: bytes) -> bytes:
    """``crypto.Sign``: r ‖ s ‖ v with v ∈ {0, 1}."""
    sig = signer.sign_digest(digest)  # v ∈ {27, 28}
    return sig[:64] + bytes((sig[64] - 27,))


def recover_message_key(digest: bytes, signature: bytes) -> bytes:
    """The 65-byte public key behind a message signature; ``BAD_SIGNATURE`` if none."""
    if len(signature) != SIGNATURE_SIZE:
        raise RpcError(ErrorCode.BAD_SIGNATURE, "signature must be 65 bytes")
    if signature[64] not in (0, 1):
        raise RpcError(ErrorCode.BAD_SIGNATURE, "message signature v must be 0 or 1")
    if int.from_bytes(signature[32:64], "big") > _N // 2:
        raise RpcError(ErrorCode.BAD_SIGNATURE, "signature s is not canonical (high s)")
    try:
        key = coincurve.PublicKey.from_signature_and_message(signature, digest, hasher=None)
    except ValueError as exc:
        raise RpcError(ErrorCode.BAD_SIGNATURE, "signature does not recover a key") from exc
    return key.format(compressed=False)


def normalize_public_key(public_key: bytes) -> bytes:
    """33/65-byte key → 65-byte uncompressed; ``BAD_REQUEST`` if not on the curve."""
    try:
        return coincurve.PublicKey(public_key).format(compressed=False)
    except (ValueError, TypeError) as exc:
        raise RpcError(ErrorCode.BAD_REQUEST, "not a secp256k1 public key") from exc


def eth_message_digest(blob: bytes) -> bytes:
    """EIP-191 hash of ``keccak256(blob)``, as ``SignEthMessageV2`` signs it."""
    return keccak256(_EIP191_32 + keccak256(blob))


def sign_blob(signer: Signer, blob: bytes) -> bytes:
    """``lib.SignEthMessageV2``: 65 bytes with v ∈ {27, 28}."""
    return signer.sign_digest(eth_message_digest(blob))


def recover_blob_signer(blob: bytes, signature: bytes) -> str:
    """Checksum address that signed ``blob`` with ``sign_blob``; ``BAD_SIGNATURE`` if none."""
    if len(signature) != SIGNATURE_SIZE or signature[64] not in (27, 28):
        raise RpcError(ErrorCode.BAD_SIGNATURE, "blob signature must be 65 bytes, v 27/28")
    fixed = signature[:64] + bytes((signature[64] - 27,))
    return public_key_to_address(recover_message_key(eth_message_digest(blob), fixed))


@dataclass(frozen=True, slots=True)
class Approval:
    """The provider's approval blob, decoded."""

    bid_id: str
    chain_id: int
    user: str
    timestamp_ms: int

    def encode(self) -> bytes:
        return abi_encode(list(APPROVAL_TYPES), [bytes.fromhex(self.bid_id[2:]), self.chain_id,
                                                 self.user, self.timestamp_ms])

    @classmethod
    def decode(cls, blob: bytes) -> Approval:
        """Strict ABI decode (exact length, clean padding); ``BAD_REQUEST`` otherwise."""
        if len(blob) != 32 * len(APPROVAL_TYPES):
            raise RpcError(ErrorCode.BAD_REQUEST, "approval must be 128 bytes")
        try:
            bid, chain, user, ts = abi_decode(list(APPROVAL_TYPES), blob, strict=True)
        except DecodingError as exc:
            raise RpcError(ErrorCode.BAD_REQUEST, f"approval is not ABI: {exc}") from exc
        return cls("0x" + bytes(bid).hex(), int(chain), to_checksum_address(user), int(ts))


@dataclass(frozen=True, slots=True)
class Report:
    """The provider's session report (closeSession receipt), decoded."""

    session_id: str
    chain_id: int
    timestamp_ms: int
    tps_scaled1000: int
    ttft_ms: int
    input_tokens: int
    output_tokens: int

    def encode(self) -> bytes:
        return abi_encode(list(REPORT_TYPES), [
            bytes.fromhex(self.session_id[2:]), self.chain_id, self.timestamp_ms,
            self.tps_scaled1000, self.ttft_ms, self.input_tokens, self.output_tokens])

    @classmethod
    def decode(cls, blob: bytes) -> Report:
        if len(blob) != 32 * len(REPORT_TYPES):
            raise RpcError(ErrorCode.BAD_REQUEST, "report must be 224 bytes")
        try:
            sid, chain, ts, tps, ttft, inp, out = abi_decode(list(REPORT_TYPES), blob, strict=True)
        except DecodingError as exc:
            raise RpcError(ErrorCode.BAD_REQUEST, f"report is not ABI: {exc}") from exc
        return cls("0x" + bytes(sid).hex(), int(chain), int(ts), int(tps), int(ttft), int(inp),
                   int(out))
