"""The market's data as every layer above ``chain/`` sees it, whatever the contract.

A contract flavour (our ``Marketplace`` in ``marketplace.py``; later the
Morpheus-Lumerin diamond) reads its own structs and maps them here once:
amounts are ``int`` wei, times unix seconds (0 = not set), 32-byte ids 0x +
64 lower-case hex digits, addresses EIP-55 checksummed (compare them with
``same_address``). ``to_json``/``from_json`` are the one place the camelCase
wire and store form is produced and read back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeAlias

from eth_utils import to_checksum_address

Json: TypeAlias = dict[str, Any]


def same_address(a: str | None, b: str | None) -> bool:
    """Addresses compare case-insensitively (checksummed vs lower-case forms)."""
    return a is not None and b is not None and a.lower() == b.lower()


def normalize_id(value: str | bytes) -> str:
    """A 32-byte id as 0x + 64 lower-case hex digits; ``ValueError`` otherwise."""
    raw = bytes(value) if isinstance(value, bytes | bytearray) else bytes.fromhex(
        value.removeprefix("0x").removeprefix("0X"))
    if len(raw) != 32:
        raise ValueError(f"expected a 32-byte id, got {len(raw)} bytes")
    return "0x" + raw.hex()


def normalize_address(value: str) -> str:
    return str(to_checksum_address(value))


def chain_now(head_timestamp: int = 0) -> int:
    """The chain's "now" for deadlines: wall-clock seconds, never behind the last
    block seen (anvil's clock can run ahead of ours after ``evm_increaseTime``)."""
    return max(int(time.time()), head_timestamp)


class SessionStatus(StrEnum):
    UNKNOWN = "unknown"  # no such session on chain
    OPEN = "open"
    EXPIRED = "expired"  # past its end, not settled yet
    CLOSED = "closed"


class _Record:
    """camelCase JSON of a frozen dataclass: ``snake_case`` fields ↔ ``camelCase`` keys."""

    __slots__ = ()
    _KEYS: ClassVar[dict[str, str]] = {}  # field name → JSON key, where not plain camelCase

    def to_json(self) -> Json:
        out: Json = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[self._key(f.name)] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key = cls._key(f.name)
            if key in data:
                value = data[key]
                kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    @classmethod
    def _key(cls, name: str) -> str:
        if name in cls._KEYS:
            return cls._KEYS[name]
        head, *rest = name.split("_")
        return head + "".join(part.capitalize() for part in rest)


@dataclass(frozen=True, slots=True)
class Provider(_Record):
    id: str  # the provider's address
    endpoint: str = ""  # host:port of its MOR-RPC listener
    stake: int = 0
    created_at: int = 0  # 0 = never registered
    active_bids: int = 0
    session_count: int = 0
    is_deleted: bool = False

    @property
    def address(self) -> str:
        return self.id

    @property
    def registered(self) -> bool:
        return self.created_at > 0 and not self.is_deleted


@dataclass(frozen=True, slots=True)
class Model(_Record):
    _KEYS: ClassVar[dict[str, str]] = {"ipfs_cid": "ipfsCID"}

    id: str
    owner: str = ""
    base_model_id: str = "0x" + "00" * 32
    ipfs_cid: str = "0x" + "00" * 32
    stake: int = 0
    name: str = ""
    tags: tuple[str, ...] = ()
    created_at: int = 0  # 0 = unknown model
    active_bids: int = 0
    is_deleted: bool = False

    @property
    def exists(self) -> bool:
        return self.created_at > 0 and not self.is_deleted


@dataclass(frozen=True, slots=True)
class Bid(_Record):
    id: str
    provider: str = ""
    model_id: str = "0x" + "00" * 32
    price_per_second: int = 0  # MOR wei per second
    nonce: int = 0
    created_at: int = 0  # 0 = unknown bid
    deleted_at: int = 0  # 0 = active

    @property
    def active(self) -> bool:
        return self.created_at > 0 and not self.deleted_at


@dataclass(frozen=True, slots=True)
class Session(_Record):
    """``provider_earned + user_refund == stake`` once closed (a Morpheus stake-mode
    session refunds the whole stake: the funding account pays the provider); ``held``
    is the part of ``provider_earned`` not paid out yet (until claimed)."""

    id: str
    user: str = ""
    provider: str = ""
    bid_id: str = "0x" + "00" * 32
    model_id: str = "0x" + "00" * 32
    stake: int = 0
    price_per_second: int = 0
    opened_at: int = 0  # 0 = unknown session
    ends_at: int = 0
    closed_at: int = 0  # 0 = open
    provider_earned: int = 0
    user_refund: int = 0
    held: int = 0
    release_at: int = 0  # when a disputed share becomes claimable
    disputed: bool = False
    closed: bool = False
    claimed: bool = False
    direct_payment: bool = True  # False: a Morpheus stake-mode session (emission-funded)
    claimed_amount: int = 0  # what the provider has withdrawn so far (Morpheus)

    @property
    def exists(self) -> bool:
        return self.opened_at > 0

    def status(self, now: int) -> SessionStatus:
        if not self.exists:
            return SessionStatus.UNKNOWN
        if self.closed:
            return SessionStatus.CLOSED
        return SessionStatus.EXPIRED if now >= self.ends_at else SessionStatus.OPEN

    def seconds_left(self, now: int) -> int:
        return 0 if self.closed else max(0, self.ends_at - now)

    def cost_so_far(self, now: int) -> int:
        """What the provider has earned so far (all of it once closed), at most the stake."""
        end = self.closed_at if self.closed else min(now, self.ends_at)
        return min(self.stake, max(0, end - self.opened_at) * self.price_per_second)


@dataclass(frozen=True, slots=True)
class ProviderModelStats(_Record):
    """Sums over a provider's undisputed receipts for one model (rating input)."""

    total_count: int = 0
    success_count: int = 0
    tps_x1000_sum: int = 0
    ttft_ms_sum: int = 0
    prompt_tokens_sum: int = 0
    tps_x1000_sq_sum: int = 0
    ttft_ms_sq_sum: int = 0
    completion_tokens_sum: int = 0

    @property
    def mean_tps(self) -> float:
        return self.tps_x1000_sum / self.success_count / 1000 if self.success_count else 0.0

    @property
    def mean_ttft_ms(self) -> float:
        return self.ttft_ms_sum / self.success_count if self.success_count else 0.0


MarketRecord: TypeAlias = Provider | Model | Bid | Session
RECORD_TYPES: dict[str, type[Provider] | type[Model] | type[Bid] | type[Session]] = {
    "provider": Provider, "model": Model, "bid": Bid, "session": Session}
