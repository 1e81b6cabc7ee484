"""Our Marketplace flavour: its calls and the MOR token, on top of ``ChainClient``.

Amounts are integers in wei; ids go in as 32-byte ``bytes`` or 0x-hex and the
views come back as the flavour-neutral records of ``chain/types.py`` (this is
the one place our contract's structs are mapped to them).
"""

from __future__ import annotations

from typing import ClassVar

from eth_abi.packed import encode_packed
from eth_utils import keccak

from proxy_router.chain.client import TxResult
from proxy_router.chain.flavor import Block, Flavor, MarketplaceBase, Settled, to_bytes32
from proxy_router.chain.types import (
    Bid,
    Model,
    Provider,
    ProviderModelStats,
    Session,
    normalize_address,
    normalize_id,
)


class Marketplace(MarketplaceBase):
    """Our contract: escrow of ``price × duration``, refunds at close, disputes held."""

    flavor: Flavor = "native"
    artifact = "Marketplace"
    GETTERS: ClassVar[dict[str, str]] = {
        "provider_min_stake": "providerMinStake", "model_min_stake": "modelMinStake",
        "bid_fee": "bidFee", "model_ids": "getModelIds",  # registered, not deregistered
        "bids_of_model": "getActiveBidsByModel", "bids_of_provider": "getActiveBidsByProvider",
        "user_sessions": "getSessionsByUser", "provider_sessions": "getSessionsByProvider"}

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
        fee = await self.bid_fee()
        if fee:
            await self.ensure_allowance(fee)
        tx = await self.client.transact(self.contract, "postModelBid", to_bytes32(model_id),
                                        price_per_second)
        return "0x" + bytes(tx.event("BidPosted")["bidId"]).hex(), tx

    async def stake_for(self, price_per_second: int, seconds: int, *,
                        direct: bool = True) -> int:
        """The escrow a session of ``seconds`` takes: exactly what it can cost."""
        if not direct:
            raise ValueError("this marketplace has no stake-mode sessions")
        return price_per_second * seconds

    async def open_session(self, amount: int, approval: bytes, signature: bytes, *,
                           direct: bool = True) -> tuple[str, TxResult]:
        if not direct:
            raise ValueError("this marketplace has no stake-mode sessions")
        await self.ensure_allowance(amount)
        tx = await self.client.transact(self.contract, "openSession", amount, approval, signature)
        return "0x" + bytes(tx.event("SessionOpened")["sessionId"]).hex(), tx

    async def claim_for_provider(self, session_id: str | bytes) -> TxResult:
        return await self.client.transact(self.contract, "claimForProvider",
                                          to_bytes32(session_id))

    def approval_key(self, user: str, provider: str, bid_id: bytes, approval: bytes) -> str:
        """What an approval is remembered by until it is used: the id of the session it
        opens (the contract derives it from the approval)."""
        return "0x" + keccak(encode_packed(["address", "address", "bytes32", "bytes32"],
                                           [user, provider, bid_id, keccak(approval)])).hex()

    async def approval_used(self, key: str) -> bool:
        return (await self.get_session(key)).exists

    async def settled(self, tx: TxResult, session: Session) -> Settled:
        args = tx.event("SessionSettled")
        return Settled(int(args["providerEarned"]), int(args["userRefund"]),
                       int(args["held"]), bool(args["disputed"]))

    # -- views ----------------------------------------------------------------

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
