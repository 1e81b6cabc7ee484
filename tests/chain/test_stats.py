"""getProviderModelStats: settled receipts are summed; disputes and provider closes only count."""

from __future__ import annotations

import dataclasses

from proxy_router.chain.marketplace import Marketplace

from .helpers import (
    ChainHandle,
    Offer,
    as_view,
    close_by_provider,
    close_disputed,
    close_settled,
    onboard,
    open_session,
)

U64_MAX = 2**64 - 1
EMPTY = {"totalCount": 0, "successCount": 0, "tpsX1000Sum": 0, "ttftMsSum": 0,
         "promptTokensSum": 0, "tpsX1000SqSum": 0, "ttftMsSqSum": 0, "completionTokensSum": 0}


async def test_stats_sum_the_metrics_of_settled_receipts(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    receipts = [
        {"tps_x1000": 25_000, "ttft_ms": 100, "prompt_tokens": 10, "completion_tokens": 100},
        {"tps_x1000": 30_500, "ttft_ms": 250, "prompt_tokens": 20, "completion_tokens": 300},
        {"tps_x1000": 41_000, "ttft_ms": 90, "prompt_tokens": 35, "completion_tokens": 7},
    ]
    assert as_view(await user.get_stats(offer.provider, offer.model_id)) == EMPTY

    for metrics in receipts:
        session_id, _ = await open_session(user, provider, offer.bid_id)
        chain.increase_time(60)
        await close_settled(user, provider, session_id, **metrics)

    assert as_view(await user.get_stats(offer.provider, offer.model_id)) == {
        "totalCount": 3,
        "successCount": 3,
        "tpsX1000Sum": sum(r["tps_x1000"] for r in receipts),
        "ttftMsSum": sum(r["ttft_ms"] for r in receipts),
        "promptTokensSum": sum(r["prompt_tokens"] for r in receipts),
        "tpsX1000SqSum": sum(r["tps_x1000"] ** 2 for r in receipts),
        "ttftMsSqSum": sum(r["ttft_ms"] ** 2 for r in receipts),
        "completionTokensSum": sum(r["completion_tokens"] for r in receipts),
    }


async def test_disputed_and_provider_closes_only_increment_the_total_count(
    chain: ChainHandle, provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    settled, _ = await open_session(user, provider, offer.bid_id)
    await close_settled(user, provider, settled, tps_x1000=20_000, ttft_ms=50,
                        prompt_tokens=1, completion_tokens=2)
    before = await user.get_stats(offer.provider, offer.model_id)

    disputed, _ = await open_session(user, provider, offer.bid_id)
    await close_disputed(user, disputed)
    by_provider, _ = await open_session(user, provider, offer.bid_id)
    chain.increase_time(4000)
    await close_by_provider(provider, by_provider)

    assert await user.get_stats(offer.provider, offer.model_id) == dataclasses.replace(
        before, total_count=before.total_count + 2)
    assert before.success_count == 1


async def test_stats_are_kept_per_provider_and_model(
    provider: Marketplace, user: Marketplace, other: Marketplace, offer: Offer,
) -> None:
    rival = await onboard(other, model_id=offer.model_id)
    second_model = await onboard(provider)
    session_id, _ = await open_session(user, provider, offer.bid_id)

    await close_settled(user, provider, session_id, tps_x1000=1_000)

    assert (await user.get_stats(offer.provider, offer.model_id)).tps_x1000_sum == 1_000
    assert as_view(await user.get_stats(rival.provider, offer.model_id)) == EMPTY
    assert as_view(await user.get_stats(offer.provider, second_model.model_id)) == EMPTY


async def test_token_sums_saturate_instead_of_making_the_close_revert(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    for _ in range(2):
        session_id, _ = await open_session(user, provider, offer.bid_id)
        await close_settled(user, provider, session_id, prompt_tokens=U64_MAX,
                            completion_tokens=U64_MAX - 1)

    stats = await user.get_stats(offer.provider, offer.model_id)
    assert (stats.prompt_tokens_sum, stats.completion_tokens_sum) == (U64_MAX, U64_MAX)
    assert stats.success_count == 2


async def test_the_largest_uint32_metrics_do_not_overflow_the_square_sums(
    provider: Marketplace, user: Marketplace, offer: Offer,
) -> None:
    u32_max = 2**32 - 1
    for _ in range(2):
        session_id, _ = await open_session(user, provider, offer.bid_id)
        await close_settled(user, provider, session_id, tps_x1000=u32_max, ttft_ms=u32_max)

    stats = await user.get_stats(offer.provider, offer.model_id)
    assert stats.tps_x1000_sum == 2 * u32_max
    assert stats.tps_x1000_sq_sum == 2 * u32_max**2
    assert stats.ttft_ms_sq_sum == 2 * u32_max**2
