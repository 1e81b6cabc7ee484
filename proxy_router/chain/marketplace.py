"""Our Marketplace flavour: its calls and the MOR token, on top of ``ChainClient``.

Amounts are integers in wei; ids go in as 32-byte ``bytes`` or 0x-hex and the
views come back as the flavour-neutral records of ``chain/types.py`` (this is
the one place our contract's structs are mapped to them).
"""

from __future__ import annotations

from typing import Any

from eth_utils import to_checksum_address

from proxy_router.chain.client import ChainClient, TxResult
from proxy_router.chain.encoding import jsonable
from proxy_router.chain.types import (
    Bid,
    Model,
    Provider,
    ProviderModelStats,
    Session,
    normalize_address,
    normalize_id,
)

Block = int | str
PAGE = 200  # ids per call of a paged view


def to_bytes32(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        if len(value) != 32:
            raise ValueError("expected 32 bytes")
        return value
    raw = bytes.fromhex(value.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError(f"expected a 32-byte 0x-hex id, got {value!r}")
    return raw


class Marketplace:
    def __init__(self, client: ChainClient, marketplace_address: str,
                 mor_token_address: str) -> None:
        self.client = client
        self.contract = client.contract("Marketplace", marketplace_address)
        self.token = client.contract("MorToken", mor_token_address)

    @property
    def address(self) -> str:
        return str(self.contract.address)

    # -- MOR -----------------------------------------------------------------

    async def mor_balance(self, account: str) -> int:
        return int(await self.client.call(self.token, "balanceOf", account))

    async def eth_balance(self, account: str) -> int:
        return int(await ChainClient._guard(
            self.client.w3.eth.get_balance(to_checksum_address(account))))

    async def mor_allowance(self, owner: str) -> int:
        """MOR ``owner`` lets the marketplace take (stakes, escrow, fees)."""
        return int(await self.client.call(self.token, "allowance", normalize_address(owner),
                                          self.address))

    async def send_mor(self, to: str, amount: int) -> TxResult:
        return await self.client.transact(self.token, "transfer", normalize_address(to), amount)

    async def ensure_allowance(self, amount: int) -> TxResult | None:
        """Approve the marketplace for ``amount`` when the allowance is below it.

        Approves a 3x reserve so consecutive sessions do not each pay for an
        approval transaction.
        """
        current = int(await self.client.call(self.token, "allowance", self.client.address,
                                             self.address))
        if current >= amount:
            return None
        return await self.client.transact(self.token, "approve", self.address, amount * 3)

    # -- writes ---------------------------------------------------------------

    async def register_provider(self, amount: int, endpoint: str) -> TxResult:
        await self.ensure_allowance(amount)
        return await self.client.transact(self.contract, "providerRegister", amount, endpoint)

    async def deregister_provider(self) -> TxResult:
        return await self.client.transact(self.contract, "providerDeregister")

    async def register_model(self, base_model_id: bytes, ipfs_cid: bytes, amount: int,
                             name: str, tags: list[str]) -> tuple[str, TxResult]:
        await self.ensure_allowance(amount)
        tx = await self.client.transact(self.contract, "modelRegister", base_model_id,
                                        ipfs_cid, amount, name, tags)
        return "0x" + bytes(tx.event("ModelRegistered")["modelId"]).hex(), tx

    async def post_bid(self, model_id: str | bytes, price_per_second: int) -> tuple[str, TxResult]:
        fee = await self.param("bidFee")
        if fee:
            await self.ensure_allowance(fee)
        tx = await self.client.transact(self.contract, "postModelBid", to_bytes32(model_id),
                                        price_per_second)
        return "0x" + bytes(tx.event("BidPosted")["bidId"]).hex(), tx

    async def open_session(self, amount: int, approval: bytes,
                           signature: bytes) -> tuple[str, TxResult]:
        await self.ensure_allowance(amount)
        tx = await self.client.transact(self.contract, "openSession", amount, approval, signature)
        return "0x" + bytes(tx.event("SessionOpened")["sessionId"]).hex(), tx

    async def close_session(self, receipt: bytes, signature: bytes) -> TxResult:
        return await self.client.transact(self.contract, "closeSession", receipt, signature)

    async def deregister_model(self, model_id: str | bytes) -> TxResult:
        return await self.client.transact(self.contract, "modelDeregister",
                                          to_bytes32(model_id))

    async def delete_bid(self, bid_id: str | bytes) -> TxResult:
        return await self.client.transact(self.contract, "deleteModelBid", to_bytes32(bid_id))

    async def claim_for_provider(self, session_id: str | bytes) -> TxResult:
        return await self.client.transact(self.contract, "claimForProvider",
                                          to_bytes32(session_id))

    # -- views ----------------------------------------------------------------

    async def param(self, name: str) -> int:
        return int(await self.client.call(self.contract, name))

    async def _view(self, fn: str, *args: Any, block: Block) -> dict[str, Any]:
        value = jsonable(await self.client.call(self.contract, fn, *args, block=block))
        assert isinstance(value, dict)
        return value

    async def get_provider(self, address: str, *, block: Block = "latest") -> Provider:
        address = normalize_address(address)
        raw = await self._view("getProvider", address, block=block)
        return Provider.from_json({**raw, "id": address})

    async def get_model(self, model_id: str | bytes, *, block: Block = "latest") -> Model:
        raw = await self._view("getModel", to_bytes32(model_id), block=block)
        return Model.from_json({**raw, "id": normalize_id(model_id)})

    async def get_bid(self, bid_id: str | bytes, *, block: Block = "latest") -> Bid:
        raw = await self._view("getBid", to_bytes32(bid_id), block=block)
        return Bid.from_json({**raw, "id": normalize_id(bid_id)})

    async def get_session(self, session_id: str | bytes, *,
                          block: Block = "latest") -> Session:
        raw = await self._view("getSession", to_bytes32(session_id), block=block)
        return Session.from_json({**raw, "id": normalize_id(session_id)})

    async def get_stats(self, provider: str, model_id: str | bytes) -> ProviderModelStats:
        raw = await self._view("getProviderModelStats", normalize_address(provider),
                               to_bytes32(model_id), block="latest")
        return ProviderModelStats.from_json(raw)

    # -- paged lists (the contract's ``(ids, total)`` views) ---------------------------------

    async def _all_ids(self, fn: str, *args: Any) -> list[str]:
        ids: list[str] = []
        offset = 0
        while True:
            page, total = await self.client.call(self.contract, fn, *args, offset, PAGE)
            ids.extend(normalize_id(bytes(i)) for i in page)
            offset += PAGE
            if offset >= int(total) or not page:
                return ids

    async def model_ids(self) -> list[str]:
        """Registered (not deregistered) models."""
        return await self._all_ids("getModelIds")

    async def active_models(self) -> list[Model]:
        return [await self.get_model(i) for i in await self.model_ids()]

    async def active_bids(self, model_id: str | bytes) -> list[Bid]:
        ids = await self._all_ids("getActiveBidsByModel", to_bytes32(model_id))
        return [await self.get_bid(i) for i in ids]

    async def active_bid_ids_of(self, provider: str) -> list[str]:
        return await self._all_ids("getActiveBidsByProvider", normalize_address(provider))

    async def sessions_of(self, account: str, *, as_provider: bool = False) -> list[Session]:
        """A user's (or a provider's) sessions, oldest first."""
        fn = "getSessionsByProvider" if as_provider else "getSessionsByUser"
        ids = await self._all_ids(fn, normalize_address(account))
        return [await self.get_session(i) for i in ids]

    async def sessions_of_user(self, user: str, offset: int, limit: int
                               ) -> tuple[list[str], int]:
        """One page of the user's session ids (newest last) and their total count."""
        ids, total = await self.client.call(self.contract, "getSessionsByUser",
                                            normalize_address(user), offset, limit)
        return [normalize_id(bytes(i)) for i in ids], int(total)
