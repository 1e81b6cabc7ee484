"""Shared steps of the marketplace specification: onboarding, approvals, receipts, balances.

Everything goes through ``proxy_router.chain`` (``Marketplace`` / ``ChainClient.transact``), so
the tests exercise the same transaction code as the routers. Ids are 0x-hex strings, as the
``Marketplace`` views return them; amounts are MOR wei.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from proxy_router.chain.client import TxResult
from proxy_router.chain.deploy import Deployment
from proxy_router.chain.encoding import Approval, Receipt, sign_blob
from proxy_router.chain.errors import ContractReverted
from proxy_router.chain.marketplace import Marketplace, to_bytes32
from proxy_router.chain.types import Bid, Model, Provider, ProviderModelStats, Session
from proxy_router.dev.anvil import Anvil, dev_address, rpc

# Anvil dev accounts, as in tests/conftest.py.
DEPLOYER, PROVIDER, USER, OTHER, FEE_RECIPIENT = 0, 1, 2, 3, 9

MOR = 10**18
PROVIDER_STAKE = MOR  # above the 0.2 MOR minimum
MODEL_STAKE = MOR // 10  # exactly the 0.1 MOR minimum
BID_FEE = 3 * MOR // 10
PRICE = 10**15  # MOR wei per second: 3.6 MOR per hour
HOUR = 3600
DAY = 86_400
ONE_HOUR_STAKE = HOUR * PRICE


class ChainHandle(Protocol):
    """What tests/conftest.py's ``chain`` fixture provides."""

    anvil: Anvil
    deployment: Deployment

    async def market(self, account: int) -> Marketplace: ...

    def increase_time(self, seconds: int) -> None: ...


# ---------------------------------------------------------------------- small utilities


def hex32(value: bytes | str) -> str:
    return "0x" + to_bytes32(value).hex()


def random_base_model_id() -> bytes:
    """A fresh base model id, so every test's model ids are unused on the shared chain."""
    return os.urandom(32)


def addr(market: Marketplace) -> str:
    return market.client.address


def account(market: Marketplace) -> LocalAccount:
    assert market.client.account is not None
    return market.client.account


def model_id_of(owner: str, base_model_id: bytes) -> str:
    """keccak256(abi.encodePacked(owner, baseModelId))."""
    return hex32(keccak(bytes.fromhex(owner[2:]) + base_model_id))


def bid_id_of(provider: str, model_id: str, nonce: int) -> str:
    """keccak256(abi.encodePacked(provider, modelId, uint256(nonce)))."""
    return hex32(keccak(bytes.fromhex(provider[2:]) + to_bytes32(model_id)
                        + nonce.to_bytes(32, "big")))


def session_id_of(user: str, provider: str, bid_id: str, approval: bytes) -> str:
    """keccak256(abi.encodePacked(user, provider, bidId, keccak256(approval)))."""
    return hex32(keccak(bytes.fromhex(user[2:]) + bytes.fromhex(provider[2:])
                        + to_bytes32(bid_id) + keccak(approval)))


def same_address(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def as_view(record: Provider | Model | Bid | Session | ProviderModelStats) -> dict[str, Any]:
    """A view's record in the contract struct's camelCase form (as the API shows it),
    without the id the record adds."""
    data = record.to_json()
    data.pop("id", None)
    if isinstance(record, Session):  # the Morpheus flavour's fields, not in our struct
        data.pop("directPayment")
        data.pop("claimedAmount")
    return data


async def latest_timestamp(market: Marketplace) -> int:
    block = await market.client.w3.eth.get_block("latest")
    return int(block["timestamp"])


def set_next_block_timestamp(chain: ChainHandle, timestamp: int) -> None:
    """Pin the timestamp of the next mined block (anvil accepts equal-to-latest)."""
    rpc(chain.anvil.rpc_url, "evm_setNextBlockTimestamp", [timestamp])


@contextmanager
def reverts(error_name: str, **expected_args: Any) -> Iterator[pytest.ExceptionInfo[Any]]:
    """Expect a ``ContractReverted`` named ``error_name`` with (a subset of) these arguments.

    Address arguments compare case-insensitively, bytes32 arguments may be given as 0x-hex.
    """
    with pytest.raises(ContractReverted) as info:
        yield info
    err: ContractReverted = info.value
    assert err.error_name == error_name, f"expected {error_name}, got {err.reason}"
    for key, want in expected_args.items():
        got = err.error_args[key]
        if isinstance(got, bytes):
            got = "0x" + got.hex()
        if isinstance(got, str) and isinstance(want, str):
            assert got.lower() == want.lower(), f"{key}: {got} != {want}"
        else:
            assert got == want, f"{key}: {got} != {want}"


# ---------------------------------------------------------------------- onboarding


@dataclass(frozen=True)
class Offer:
    """A registered provider with a model and an active bid on it."""

    provider: str
    model_id: str
    bid_id: str
    price: int


async def register_model(owner: Marketplace, *, base_model_id: bytes | None = None,
                         stake: int = MODEL_STAKE, name: str = "llama-3-8b",
                         tags: list[str] | None = None,
                         ipfs_cid: bytes = b"\x01" * 32) -> tuple[str, TxResult]:
    return await owner.register_model(base_model_id or random_base_model_id(), ipfs_cid, stake,
                                      name, tags if tags is not None else ["chat", "llama"])


async def onboard(provider: Marketplace, *, price: int = PRICE,
                  model_owner: Marketplace | None = None, model_id: str | None = None,
                  endpoint: str = "provider.example:3333",
                  stake: int = PROVIDER_STAKE) -> Offer:
    """Register ``provider`` (unless it already is), a fresh model (unless ``model_id`` is given;
    owned by ``model_owner`` or the provider) and post a bid at ``price``."""
    info = await provider.get_provider(addr(provider))
    if info.created_at == 0 or info.is_deleted:
        await provider.register_provider(stake, endpoint)
    if model_id is None:
        model_id, _ = await register_model(model_owner or provider)
    bid_id, _ = await provider.post_bid(model_id, price)
    return Offer(addr(provider), model_id, bid_id, price)


# ---------------------------------------------------------------------- sessions


async def sign_approval(signer: Marketplace, bid_id: str, user: str, *,
                        timestamp: int | None = None, chain_id: int | None = None,
                        age: int = 0) -> tuple[bytes, bytes]:
    """(approval blob, signature) by ``signer``; timestamp = latest block time - ``age``."""
    if timestamp is None:
        timestamp = await latest_timestamp(signer) - age
    approval = Approval(
        bid_id=to_bytes32(bid_id),
        chain_id=signer.client.chain_id if chain_id is None else chain_id,
        user=to_checksum_address(user),
        timestamp=timestamp,
    ).encode()
    return approval, sign_blob(account(signer), approval)


_issued: set[bytes] = set()


async def fresh_approval(provider: Marketplace, bid_id: str, user: str) -> tuple[bytes, bytes]:
    """An approval no earlier call has issued.

    The approval (bidId, chainId, user, timestamp) has no nonce and its hash is the session
    nonce, so two approvals for the same user and bid in the same second are the same approval
    and can open only one session. Like a provider router must, step the timestamp back a second
    (well within the TTL) until the blob is new.
    """
    timestamp = await latest_timestamp(provider)
    while True:
        approval, signature = await sign_approval(provider, bid_id, user, timestamp=timestamp)
        if approval not in _issued:
            _issued.add(approval)
            return approval, signature
        timestamp -= 1


async def open_session(user: Marketplace, provider: Marketplace, bid_id: str,
                       stake: int = ONE_HOUR_STAKE) -> tuple[str, TxResult]:
    """Get a fresh approval signed by ``provider`` and open a session as ``user``."""
    approval, signature = await fresh_approval(provider, bid_id, addr(user))
    return await user.open_session(stake, approval, signature)


async def sign_receipt(signer: Marketplace, session_id: str, *, chain_id: int | None = None,
                       tps_x1000: int = 25_000, ttft_ms: int = 120, prompt_tokens: int = 50,
                       completion_tokens: int = 200) -> tuple[bytes, bytes]:
    """(receipt blob, signature) by ``signer``, dated at the latest block."""
    receipt = Receipt(
        session_id=to_bytes32(session_id),
        chain_id=signer.client.chain_id if chain_id is None else chain_id,
        timestamp=await latest_timestamp(signer),
        tps_x1000=tps_x1000,
        ttft_ms=ttft_ms,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    ).encode()
    return receipt, sign_blob(account(signer), receipt)


async def close_settled(user: Marketplace, provider: Marketplace, session_id: str,
                        **metrics: int) -> TxResult:
    """The normal close: the user submits a receipt the provider signed."""
    return await user.close_session(*await sign_receipt(provider, session_id, **metrics))


async def close_disputed(user: Marketplace, session_id: str) -> TxResult:
    """The user closes without the provider's receipt (a self-signed one)."""
    return await user.close_session(*await sign_receipt(user, session_id))


async def close_by_provider(provider: Marketplace, session_id: str) -> TxResult:
    return await provider.close_session(*await sign_receipt(provider, session_id))


def earned(session: Mapping[str, Any]) -> int:
    """(min(closedAt, endsAt) - openedAt) * pricePerSecond, from a closed session's fields."""
    assert session.closed_at != 0
    until = min(session.closed_at, session.ends_at)
    return int((until - session.opened_at) * session.price_per_second)


# ---------------------------------------------------------------------- balances


async def balances(market: Marketplace, **accounts: str) -> dict[str, int]:
    return {name: await market.mor_balance(a) for name, a in accounts.items()}


class Ledger:
    """MOR balances of the parties of a settlement, for exact before/after deltas."""

    def __init__(self, market: Marketplace, **accounts: str) -> None:
        self.market = market
        self.accounts = {"contract": market.address,
                         "fee_recipient": dev_address(FEE_RECIPIENT), **accounts}
        self.start: dict[str, int] = {}

    async def open(self) -> Ledger:
        self.start = await balances(self.market, **self.accounts)
        return self

    async def deltas(self) -> dict[str, int]:
        now = await balances(self.market, **self.accounts)
        return {name: now[name] - self.start[name] for name in self.accounts}

    async def total(self) -> int:
        return sum((await balances(self.market, **self.accounts)).values())
