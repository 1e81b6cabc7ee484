"""RateLimiter: a burst, then the steady rate, per key, in bounded memory."""

from __future__ import annotations

from proxy_router.ratelimit import RateLimiter


def test_a_key_gets_its_burst_then_the_steady_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b"), "other keys have their own bucket"
    now[0] += 0.5
    assert limiter.allow("a") and not limiter.allow("a")


def test_the_table_never_holds_more_than_max_keys() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_keys=100, clock=lambda: 0.0)
    for i in range(10_000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
