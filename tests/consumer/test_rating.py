"""Bid rating: price first, on-chain record second, never NaN, filters honoured."""

from __future__ import annotations

import math

from proxy_router.consumer.rating import rate_bids

A, B, C = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20


def bid(provider: str, price: int, ident: str = "") -> dict:
    return {"id": ident or f"0x{provider[2:6]}", "provider": provider, "pricePerSecond": price,
            "modelId": "0x" + "11" * 32}


def test_the_cheapest_bid_wins_when_nobody_has_a_record():
    rated = rate_bids([bid(A, 200), bid(B, 100)], {})
    assert [r.bid["provider"] for r in rated] == [B, A]


def test_a_proven_provider_beats_a_slightly_cheaper_unknown_one():
    stats = {A.lower(): {"totalCount": 50, "successCount": 50, "tpsX1000Sum": 50 * 40_000,
                         "ttftMsSum": 50 * 100},
             B.lower(): {"totalCount": 10, "successCount": 1, "tpsX1000Sum": 5_000,
                         "ttftMsSum": 2_000}}
    rated = rate_bids([bid(A, 110), bid(B, 100)], stats)
    assert rated[0].bid["provider"] == A


def test_scores_are_finite_for_providers_without_history():
    rated = rate_bids([bid(A, 1), bid(B, 10**20)], {A.lower(): {}, B.lower(): {}})
    assert all(math.isfinite(r.score) and r.score > 0 for r in rated)


def test_allowlist_and_exclusions_filter_bids():
    bids = [bid(A, 1), bid(B, 1), bid(C, 1)]
    assert [r.bid["provider"] for r in rate_bids(bids, {}, allowlist={B})] == [B]
    left = rate_bids(bids, {}, exclude_provider=A, exclude_providers=[C.upper()])
    assert [r.bid["provider"] for r in left] == [B]


def test_no_bids_rate_to_an_empty_list():
    assert rate_bids([], {}) == []
