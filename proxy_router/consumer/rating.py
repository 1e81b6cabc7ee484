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
    candidates = _eligible(bids, allowlist, [*exclude_providers, exclude_provider])
    if not candidates:
        return []
    rows = [(bid, stats.get(bid.provider.lower(), NO_HISTORY)) for bid in candidates]
    min_price = min(b.price_per_second for b in candidates)
    max_tps = max(s.mean_tps for _, s in rows)
    best_ttft = min((s.mean_ttft_ms for _, s in rows if s.mean_ttft_ms > 0), default=0.0)
    rated = [_rate(bid, s, min_price, max_tps, best_ttft) for bid, s in rows]
    rated.sort(key=lambda r: (-r.score, r.bid.price_per_second, r.bid.id))
    return rated


def _eligible(bids: Iterable[Bid], allowlist: set[str] | None,
              excluded: Iterable[str | None]) -> list[Bid]:
    out = {p.lower() for p in excluded if p}
    allowed = {a.lower() for a in allowlist} if allowlist else None
    return [bid for bid in bids if bid.provider.lower() not in out
            and (allowed is None or bid.provider.lower() in allowed)]


def _rate(bid: Bid, stats: ProviderModelStats, min_price: int, max_tps: float,
          best_ttft: float) -> RatedBid:
    success = (stats.success_count + 1) / (stats.total_count + 2)  # Laplace: never NaN
    tps, ttft = stats.mean_tps, stats.mean_ttft_ms
    tps_norm = tps / max_tps if max_tps > 0 else 0.5
    ttft_norm = best_ttft / ttft if ttft > 0 else 0.5
    quality = (WEIGHTS["success"] * success + WEIGHTS["tps"] * tps_norm
               + WEIGHTS["ttft"] * ttft_norm)
    price_factor = min_price / bid.price_per_second
    return RatedBid(bid, price_factor * (0.5 + 0.5 * quality), success, tps, ttft)
