"""What every marketplace flavour offers, and the parts they share.

Two contracts sell the same thing: ours (``marketplace.py``, ``MARKETPLACE_FLAVOR=native``)
and the Morpheus-Lumerin diamond (``morpheus.py``, ``MARKETPLACE_FLAVOR=morpheus``). Both
map their structs to the records of ``types.py`` and their logs to the events of
``events.py``; the roles above only see this surface. The MOR token, the paged
``(ids, total)`` views and log decoding are the same in both and live here once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from eth_utils import to_checksum_address

from proxy_router.chain.artifacts import event_topics
from proxy_router.chain.client import ChainClient, TxResult
from proxy_router.chain.encoding import jsonable
from proxy_router.chain.events import MarketEvent
from proxy_router.chain.types import (
    Bid,
    MarketRecord,
    Model,
    Session,
    normalize_address,
    normalize_id,
)

Block = int | str
Flavor = Literal["native", "morpheus"]
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


@dataclass(frozen=True, slots=True)
class Settled:
    """What one close moved, read from the transaction (to the wei).

    ``held`` is what neither side received yet: ours holds a disputed provider share
    until it is claimed; the diamond holds part of the user's stake until the next UTC
    midnight (``withdrawUserStakes``)."""

    provider_earned: int
    user_refund: int
    held: int
    disputed: bool


class MarketplaceBase:
    """A marketplace contract and its MOR token, on top of ``ChainClient``."""

    flavor: Flavor
    artifact: str  # the ABI the contract is read with

    def __init__(self, client: ChainClient, marketplace_address: str,
                 mor_token_address: str) -> None:
        self.client = client
        self.contract = client.contract(self.artifact, marketplace_address)
        self.token = client.contract("MorToken", mor_token_address)
        self._topics = event_topics(self.artifact)

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

    # -- calls both flavours name alike ------------------------------------------------

    async def close_session(self, receipt: bytes, signature: bytes) -> TxResult:
        return await self.client.transact(self.contract, "closeSession", receipt, signature)

    async def deregister_model(self, model_id: str | bytes) -> TxResult:
        return await self.client.transact(self.contract, "modelDeregister",
                                          to_bytes32(model_id))

    async def delete_bid(self, bid_id: str | bytes) -> TxResult:
        return await self.client.transact(self.contract, "deleteModelBid", to_bytes32(bid_id))

    async def param(self, name: str) -> int:
        return int(await self.client.call(self.contract, name))

    GETTERS: ClassVar[dict[str, str]] = {}
    """Our names of the contract's parameters and paged views → its functions."""

    async def provider_min_stake(self) -> int:
        return await self.param(self.GETTERS["provider_min_stake"])

    async def model_min_stake(self) -> int:
        return await self.param(self.GETTERS["model_min_stake"])

    async def bid_fee(self) -> int:
        return await self.param(self.GETTERS["bid_fee"])

    async def _view(self, fn: str, *args: Any, block: Block) -> dict[str, Any]:
        value = jsonable(await self.client.call(self.contract, fn, *args, block=block))
        assert isinstance(value, dict)
        return value

    # -- paged lists (the contracts' ``(ids, total)`` views) ---------------------------

    async def _page(self, fn: str, *args: Any, offset: int, limit: int,
                    block: Block = "latest") -> tuple[list[Any], int]:
        page, total = await self.client.call(self.contract, fn, *args, offset, limit,
                                             block=block)
        return list(page), int(total)

    async def _all(self, fn: str, *args: Any, block: Block = "latest") -> list[Any]:
        items: list[Any] = []
        offset = 0
        while True:
            page, total = await self._page(fn, *args, offset=offset, limit=PAGE, block=block)
            items.extend(page)
            offset += PAGE
            if offset >= total or not page:
                return items

    async def _all_ids(self, fn: str, *args: Any, block: Block = "latest") -> list[str]:
        return [normalize_id(bytes(i)) for i in await self._all(fn, *args, block=block)]

    async def get_model(self, model_id: str | bytes, *, block: Block = "latest") -> Model:
        raise NotImplementedError

    async def get_bid(self, bid_id: str | bytes, *, block: Block = "latest") -> Bid:
        raise NotImplementedError

    async def get_session(self, session_id: str | bytes, *,
                          block: Block = "latest") -> Session:
        raise NotImplementedError

    async def model_ids(self) -> list[str]:
        """Models on the market (not deregistered)."""
        return await self._all_ids(self.GETTERS["model_ids"])

    async def active_models(self) -> list[Model]:
        return [await self.get_model(i) for i in await self.model_ids()]

    async def active_bids(self, model_id: str | bytes) -> list[Bid]:
        ids = await self._all_ids(self.GETTERS["bids_of_model"], to_bytes32(model_id))
        return [await self.get_bid(i) for i in ids]

    async def active_bid_ids_of(self, provider: str) -> list[str]:
        return await self._all_ids(self.GETTERS["bids_of_provider"],
                                   normalize_address(provider))

    async def sessions_of(self, account: str, *, as_provider: bool = False) -> list[Session]:
        """A user's (or a provider's) sessions, oldest first."""
        view = self.GETTERS["provider_sessions" if as_provider else "user_sessions"]
        return [await self.get_session(i)
                for i in await self._all_ids(view, normalize_address(account))]

    async def sessions_of_user(self, user: str, offset: int, limit: int
                               ) -> tuple[list[str], int]:
        """One page of the user's session ids (newest last) and their total count."""
        ids, total = await self._page(self.GETTERS["user_sessions"], normalize_address(user),
                                      offset=offset, limit=limit)
        return [normalize_id(bytes(i)) for i in ids], total

    # -- events ------------------------------------------------------------------------

    def decode_log(self, raw: Any) -> MarketEvent | None:
        """The flavour-neutral event of one log of the contract, or None if not ours."""
        name = self._topics.get(bytes(raw["topics"][0])) if raw["topics"] else None
        if name is None:
            return None
        args = dict(getattr(self.contract.events, name)().process_log(raw)["args"])
        return self._event(name, int(raw["blockNumber"]), args)

    def _event(self, name: str, block: int, args: dict[str, Any]) -> MarketEvent | None:
        return MarketEvent.from_args(name, block, args)

    def derived_events(self, events: Iterable[MarketEvent],
                       records: Iterable[tuple[str, MarketRecord]]) -> list[MarketEvent]:
        """Events a flavour's contract does not emit but the roles listen for, made from
        what the index read back (the diamond has no ``SessionSettled``)."""
        return []

    async def snapshot_ids(self, block: int) -> dict[str, set[str]] | None:
        """Every live id at ``block`` through the paged views, for an index that starts
        from the head instead of folding years of logs; None: fold from the deployment."""
        return None

    async def settled(self, tx: TxResult, session: Session) -> Settled:
        """What ``tx`` (a ``closeSession``) moved for ``session`` (as read before it)."""
        raise NotImplementedError
