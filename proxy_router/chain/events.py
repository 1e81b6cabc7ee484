"""What the index tells its listeners: one flavour-neutral event per marketplace log.

Each contract flavour maps its own logs to these names (ours: ``ProviderRegistered``,
``ModelRegistered``, ``BidPosted``, ``SessionOpened``, ``SessionClosed``,
``SessionSettled``, ``ProviderClaimed``...), so the roles listen to one vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy_router.chain.types import normalize_address, normalize_id

REORG = "Reorg"
"""The name of the event listeners get after a reorg was repaired (``block``: the fork)."""


@dataclass(frozen=True, slots=True)
class MarketEvent:
    """A marketplace event: the ids it concerns (normalised as in ``types``) and, for
    settlements and claims, the amounts it moved."""

    name: str
    block: int
    provider: str | None = None
    user: str | None = None
    model_id: str | None = None
    bid_id: str | None = None
    session_id: str | None = None
    amount: int = 0  # ProviderClaimed
    provider_earned: int = 0  # SessionSettled, as the next three
    user_refund: int = 0
    held: int = 0
    disputed: bool = False

    @classmethod
    def from_args(cls, name: str, block: int, args: dict[str, Any]) -> MarketEvent:
        def addr(key: str) -> str | None:
            return normalize_address(args[key]) if key in args else None

        def ident(key: str) -> str | None:
            return normalize_id(args[key]) if key in args else None
        return cls(name, block, provider=addr("provider"), user=addr("user"),
                   model_id=ident("modelId"), bid_id=ident("bidId"),
                   session_id=ident("sessionId"), amount=int(args.get("amount", 0)),
                   provider_earned=int(args.get("providerEarned", 0)),
                   user_refund=int(args.get("userRefund", 0)), held=int(args.get("held", 0)),
                   disputed=bool(args.get("disputed", False)))
