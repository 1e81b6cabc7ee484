"""The two signed blobs the contract reads: session approvals and close receipts.

Both are ``abi.encode``-d tuples signed EIP-191 (``personal_sign``) over their
keccak256, with timestamps in seconds — the contract enforces the approval TTL
in seconds, which the reference implementation gets wrong (milliseconds).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Any

from eth_abi import decode, encode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

APPROVAL_TYPES = ["bytes32", "uint256", "address", "uint128"]
RECEIPT_TYPES = ["bytes32", "uint256", "uint128", "uint32", "uint32", "uint64", "uint64"]
UINT32_MAX = 2**32 - 1


def jsonable(value: Any) -> Any:
    """ABI values as JSON: bytes → 0x-hex, structs (dicts, named tuples) recursively."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if hasattr(value, "_asdict"):
        return {k: jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class Approval:
    bid_id: bytes
    chain_id: int
    user: str
    timestamp: int

    def encode(self) -> bytes:
        return encode(APPROVAL_TYPES, [self.bid_id, self.chain_id, self.user, self.timestamp])

    @classmethod
    def decode(cls, blob: bytes) -> Approval:
        bid_id, chain_id, user, ts = decode(APPROVAL_TYPES, blob)
        return cls(bid_id, chain_id, to_checksum_address(user), ts)


@dataclass(frozen=True)
class Receipt:
    session_id: bytes
    chain_id: int
    timestamp: int
    tps_x1000: int = 0
    ttft_ms: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def encode(self) -> bytes:
        fields = list(astuple(self))
        # uint32 fields saturate rather than overflow the encoder.
        fields[3] = min(fields[3], UINT32_MAX)
        fields[4] = min(fields[4], UINT32_MAX)
        return encode(RECEIPT_TYPES, fields)

    @classmethod
    def decode(cls, blob: bytes) -> Receipt:
        return cls(*decode(RECEIPT_TYPES, blob))


def sign_blob(account: LocalAccount, blob: bytes) -> bytes:
    """EIP-191 signature of ``keccak256(blob)``, as the contract verifies it."""
    signed = account.sign_message(encode_defunct(primitive=keccak(blob)))
    return bytes(signed.signature)


def recover_blob_signer(blob: bytes, signature: bytes) -> str:
    return str(Account.recover_message(encode_defunct(primitive=keccak(blob)),
                                       signature=signature))
