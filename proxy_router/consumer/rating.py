"""Rank active bids for a model: cheap, proven providers first.

The score is ``price_factor × (0.5 + 0.5 × quality)``: price matters most, and
on-chain statistics (from undisputed receipts) can at most halve a score.
Every term is bounded and defined for providers with no history (Laplace
smoothing), so a new provider is rated, never NaN — the reference's NaN
ratings blocked session opening.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

WEIGHTS = {"success": 0.5, "tps": 0.3, "ttft": 0.2}


@dataclass(frozen=True)
class RatedBid:
    bid: dict[str, Any]
    score: float
    success_rate: float
    tps: float
    ttft_ms: float

    def as_json(self) -> dict[str, Any]:
        return {**self.bid, "score": round(self.score, 6),
                "successRate": round(self.success_rate, 4),
                "meanTps": round(self.tps, 3), "meanTtftMs": round(self.ttft_ms, 1)}


def _mean(total: int, count: int) -> float:
    return total / count if count else 0.0


def rate_bids(bids: Iterable[dict[str, Any]], stats: dict[str, dict[str, Any]], *,
              allowlist: set[str] | None = None, exclude_provider: str | None = None,
              exclude_providers: Iterable[str] = ()) -> list[RatedBid]:
    """Best first. ``stats`` maps provider address → getProviderModelStats dict."""
    excluded = {p.lower() for p in exclude_providers}
    if exclude_provider:
        excluded.add(exclude_provider.lower())
    allowed = {a.lower() for a in allowlist} if allowlist else None
    candidates = []
    for bid in bids:
        provider = str(bid["provider"]).lower()
        if provider in excluded or (allowed is not None and provider not in allowed):
            continue
        candidates.append(bid)
    if not candidates:
        return []

    rows = []
    for bid in candidates:
        s = stats.get(str(bid["provider"]).lower(), {})
        success_count = int(s.get("successCount", 0))
        total = int(s.get("totalCount", 0))
        success = (success_count + 1) / (total + 2)
        tps = _mean(int(s.get("tpsX1000Sum", 0)), success_count) / 1000
        ttft = _mean(int(s.get("ttftMsSum", 0)), success_count)
        rows.append((bid, success, tps, ttft))

    min_price = min(int(b["pricePerSecond"]) for b in candidates)
    max_tps = max((r[2] for r in rows), default=0.0)
    known_ttft = [r[3] for r in rows if r[3] > 0]
    best_ttft = min(known_ttft) if known_ttft else 0.0

    rated = []
    for bid, success, tps, ttft in rows:
        price_factor = min_price / int(bid["pricePerSecond"])
        tps_norm = tps / max_tps if max_tps > 0 else 0.5
        ttft_norm = best_ttft / ttft if ttft > 0 else 0.5
        quality = (WEIGHTS["success"] * success + WEIGHTS["tps"] * tps_norm
                   + WEIGHTS["ttft"] * ttft_norm)
        rated.append(RatedBid(bid, price_factor * (0.5 + 0.5 * quality), success, tps, ttft))
    rated.sort(key=lambda r: (-r.score, int(r.bid["pricePerSecond"]), r.bid["id"]))
    return rated
