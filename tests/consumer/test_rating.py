"""Bid rating: price first, on-chain record second, never NaN, filters honoured."""

from __future__ import annotations

import math

from proxy_router.chain.types import Bid, ProviderModelStats
from proxy_router.consumer.rating import rate_bids

A, B, C = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20
MODEL_ID = "0x" + "11" * 32


def bid(provider: str, price: int) -> Bid:
    return Bid(id="0x" + provider[2:4] * 32, provider=provider, model_id=MODEL_ID,
               price_per_second=price, created_at=1)


def record(total: int, success: int, tps: float, ttft_ms: int) -> ProviderModelStats:
    """``success`` receipts averaging ``tps`` tokens/s and ``ttft_ms`` to the first."""
    return ProviderModelStats(total_count=total, success_count=success,
                              tps_x1000_sum=int(success * tps * 1000),
                              ttft_ms_sum=success * ttft_ms)


def test_the_cheapest_bid_wins_when_nobody_has_a_record():
    rated = rate_bids([bid(A, 200), bid(B, 100)], {})
    assert [r.bid.provider for r in rated] == [B, A]


def test_a_proven_provider_beats_a_slightly_cheaper_unknown_one():
    stats = {A.lower(): record(50, 50, tps=40, ttft_ms=100),
             B.lower(): record(10, 1, tps=5, ttft_ms=2_000)}
    rated = rate_bids([bid(A, 110), bid(B, 100)], stats)
    assert rated[0].bid.provider == A
    assert (rated[0].tps, rated[0].ttft_ms) == (40, 100), "the record's means"


def test_scores_are_finite_for_providers_without_history():
    stats = {A.lower(): ProviderModelStats(), B.lower(): ProviderModelStats()}
    rated = rate_bids([bid(A, 1), bid(B, 10**20)], stats)
    assert all(math.isfinite(r.score) and r.score > 0 for r in rated)


def test_allowlist_and_exclusions_filter_bids():
    bids = [bid(A, 1), bid(B, 1), bid(C, 1)]
    assert [r.bid.provider for r in rate_bids(bids, {}, allowlist={B})] == [B]
    left = rate_bids(bids, {}, exclude_provider=A, exclude_providers=[C.upper()])
    assert [r.bid.provider for r in left] == [B]


def test_no_bids_rate_to_an_empty_list():
    assert rate_bids([], {}) == []


def test_a_rated_bid_s_json_is_the_bid_s_plus_its_rating():
    (rated,) = rate_bids([bid(A, 7)], {A.lower(): record(4, 3, tps=12.5, ttft_ms=250)})
    body = rated.as_json()
    assert {k: body[k] for k in bid(A, 7).to_json()} == bid(A, 7).to_json()
    assert (body["pricePerSecond"], body["successRate"], body["meanTps"],
            body["meanTtftMs"]) == (7, round(4 / 6, 4), 12.5, 250.0)
