"""ReplayGuard: a frame is accepted once, and only while its timestamp is fresh."""

from __future__ import annotations

import pytest

from proxy_router.morrpc import ErrorCode, ReplayGuard, RpcError

ALICE = "0xAbC0000000000000000000000000000000000001"
BOB = "0xBBB0000000000000000000000000000000000002"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def guard(clock: Clock) -> ReplayGuard:
    return ReplayGuard(60, clock=clock)


def code_of(guard: ReplayGuard, sender: str, ts: float, nonce: str) -> ErrorCode | str | None:
    try:
        guard.check(sender, int(ts), nonce)
    except RpcError as exc:
        return exc.code
    return None


def test_fresh_frame_is_accepted_once(guard: ReplayGuard, clock: Clock) -> None:
    assert code_of(guard, ALICE, clock.now, "0x01") is None
    assert code_of(guard, ALICE, clock.now, "0x01") is ErrorCode.REPLAYED_MESSAGE


def test_sender_address_case_does_not_open_a_replay(guard: ReplayGuard, clock: Clock) -> None:
    guard.check(ALICE, int(clock.now), "0x01")
    assert code_of(guard, ALICE.lower(), clock.now, "0x01") is ErrorCode.REPLAYED_MESSAGE


def test_nonces_are_per_sender(guard: ReplayGuard, clock: Clock) -> None:
    guard.check(ALICE, int(clock.now), "0x01")
    assert code_of(guard, BOB, clock.now, "0x01") is None


@pytest.mark.parametrize("offset", [-61, 61, -3600, 10**9])
def test_stale_and_future_timestamps_are_refused(guard: ReplayGuard, clock: Clock,
                                                  offset: int) -> None:
    assert code_of(guard, ALICE, clock.now + offset, "0x01") is ErrorCode.STALE_MESSAGE


@pytest.mark.parametrize("offset", [-60, 60])
def test_window_edges_are_inclusive(guard: ReplayGuard, clock: Clock, offset: int) -> None:
    assert code_of(guard, ALICE, clock.now + offset, "0x01") is None


def test_stale_error_tells_the_receivers_clock(guard: ReplayGuard, clock: Clock) -> None:
    with pytest.raises(RpcError) as err:
        guard.check(ALICE, int(clock.now) - 500, "0x01")
    assert err.value.data == {"serverTime": int(clock.now)}


def test_a_replay_after_the_window_is_stale_not_accepted(guard: ReplayGuard,
                                                          clock: Clock) -> None:
    ts = int(clock.now)
    guard.check(ALICE, ts, "0x01")
    clock.now += 61
    assert code_of(guard, ALICE, ts, "0x01") is ErrorCode.STALE_MESSAGE
    assert len(guard) == 0  # and its nonce was forgotten


def test_memory_is_bounded_by_rate_times_window(guard: ReplayGuard, clock: Clock) -> None:
    """100 frames/s for 10 minutes: never more than 2 windows' worth remembered."""
    peak = 0
    for i in range(60_000):
        if i % 100 == 0:
            clock.now += 1
        guard.check(ALICE, int(clock.now), f"0x{i:x}")
        peak = max(peak, len(guard))
    assert peak <= 100 * 2 * 61


def test_future_dated_nonce_is_kept_until_it_would_be_stale(guard: ReplayGuard,
                                                              clock: Clock) -> None:
    ts = int(clock.now) + 60
    guard.check(ALICE, ts, "0x01")
    clock.now += 100  # still within ts + 60
    assert code_of(guard, ALICE, ts, "0x01") is ErrorCode.REPLAYED_MESSAGE


def test_full_guard_fails_closed(clock: Clock) -> None:
    guard = ReplayGuard(60, max_entries=3, clock=clock)
    for i in range(3):
        guard.check(ALICE, int(clock.now), f"0x{i}")
    assert code_of(guard, ALICE, clock.now, "0x99") is ErrorCode.RATE_LIMITED


def test_frames_signed_before_the_process_started_are_stale(clock: Clock) -> None:
    """Nonces live in memory: after a restart, nothing signed before it is accepted."""
    guard = ReplayGuard(60, clock=clock, not_before=clock.now)
    assert code_of(guard, ALICE, int(clock.now) - 15, "0x01") is ErrorCode.STALE_MESSAGE
    guard.check(ALICE, int(clock.now), "0x02")


def test_a_server_keeps_the_replay_guard_it_is_given_even_when_empty(clock: Clock) -> None:
    from proxy_router.morrpc import RpcServer, Signer

    guard = ReplayGuard(10, clock=clock, not_before=clock.now)
    assert len(guard) == 0
    assert RpcServer(Signer.from_key("0x" + "11" * 32), replay_guard=guard).replay_guard is guard
