"""Rank active bids for a model: cheap, proven providers first.

The score is ``price_factor × (0.5 + 0.5 × quality)``: price matters most, and
on-chain statistics (from undisputed receipts) can at most halve a score.
Every term is bounded and defined for providers with no history (Laplace
smoothing), so a new provider is rated, never NaN — the reference's NaN
ratings blocked session opening.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy_router.chain.types import Bid, ProviderModelStats

WEIGHTS = {"success": 0.5, "tps": 0.3, "ttft": 0.2}
NO_HISTORY = ProviderModelStats()


@dataclass(frozen=True)
class RatedBid:
    bid: Bid
    score: float
    success_rate: float
    tps: float
    ttft_ms: float

    def as_json(self) -> dict[str, Any]:
        """``schemas.RatedBid``: the bid's JSON plus its rating."""
        return {**self.bid.to_json(), "score": round(self.score, 6),
                "successRate": round(self.success_rate, 4),
                "meanTps": round(self.tps, 3), "meanTtftMs": round(self.ttft_ms, 1)}


def rate_bids(bids: Iterable[Bid], stats: Mapping[str, ProviderModelStats], *,
              allowlist: set[str] | None = None, exclude_provider: str | None = None,
              exclude_providers: Iterable[str] = ()) -> list[RatedBid]:
    """Best first. ``stats`` maps a lower-case provider address to its record for the
    model (a provider missing from it has no history)."""
    excluded = {p.lower() for p in exclude_providers}
    if exclude_provider:
        excluded.add(exclude_provider.lower())
    allowed = {a.lower() for a in allowlist} if allowlist else None
    candidates = [bid for bid in bids if bid.provider.lower() not in excluded
                  and (allowed is None or bid.provider.lower() in allowed)]
    if not candidates:
        return []

    rows = []
    for bid in candidates:
        s = stats.get(bid.provider.lower(), NO_HISTORY)
        success = (s.success_count + 1) / (s.total_count + 2)
        rows.append((bid, success, s.mean_tps, s.mean_ttft_ms))

    min_price = min(b.price_per_second for b in candidates)
    max_tps = max((r[2] for r in rows), default=0.0)
    known_ttft = [r[3] for r in rows if r[3] > 0]
    best_ttft = min(known_ttft) if known_ttft else 0.0

    rated = []
    for bid, success, tps, ttft in rows:
        price_factor = min_price / bid.price_per_second
        tps_norm = tps / max_tps if max_tps > 0 else 0.5
        ttft_norm = best_ttft / ttft if ttft > 0 else 0.5
        quality = (WEIGHTS["success"] * success + WEIGHTS["tps"] * tps_norm
                   + WEIGHTS["ttft"] * ttft_norm)
        rated.append(RatedBid(bid, price_factor * (0.5 + 0.5 * quality), success, tps, ttft))
    rated.sort(key=lambda r: (-r.score, r.bid.price_per_second, r.bid.id))
    return rated
