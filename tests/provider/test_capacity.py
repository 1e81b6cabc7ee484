"""CapacityManager: a provider with N slots for a model never runs more than N sessions
(approved-but-unopened ones included) nor streams more than N prompts at once."""

from __future__ import annotations

import pytest

from proxy_router.provider.capacity import (
    APPROVAL_TTL_SECONDS,
    CapacityManager,
    NoCapacity,
    UnknownModel,
)

M = "0x" + "aa" * 32
OTHER = "0x" + "bb" * 32
T0 = 1_700_000_000.0


def manager(slots: int = 2) -> CapacityManager:
    return CapacityManager({M: slots, OTHER: 1}, clock=lambda: T0)


def test_approves_up_to_n_and_refuses_the_next() -> None:
    cap = manager(slots=3)
    for i in range(3):
        assert cap.can_approve(M, T0)
        cap.reserve_approval(M, f"approval-{i}", T0)
    assert not cap.can_approve(M, T0)
    with pytest.raises(NoCapacity, match="3 slots"):
        cap.reserve_approval(M, "approval-3", T0)
    assert cap.in_use(M, T0) == 3


def test_reserving_the_same_approval_twice_takes_one_slot() -> None:
    cap = manager(slots=2)
    cap.reserve_approval(M, "same", T0)
    cap.reserve_approval(M, "same", T0 + 1)
    assert cap.in_use(M, T0 + 1) == 1


def test_an_unopened_approval_frees_its_slot_after_the_ttl() -> None:
    cap = manager(slots=1)
    cap.reserve_approval(M, "a", T0)
    assert not cap.can_approve(M, T0 + APPROVAL_TTL_SECONDS - 1)
    assert cap.can_approve(M, T0 + APPROVAL_TTL_SECONDS)
    assert APPROVAL_TTL_SECONDS == 600


def test_an_opened_session_takes_over_its_approvals_slot() -> None:
    cap = manager(slots=2)
    cap.reserve_approval(M, "a", T0)
    cap.track_session("s1", M, ends_at=T0 + 3600, approval_key="a")
    assert cap.in_use(M, T0) == 1
    # ...and keeps it past the approval TTL, until the session ends
    assert cap.in_use(M, T0 + APPROVAL_TTL_SECONDS + 1) == 1
    assert cap.in_use(M, T0 + 3600) == 0


def test_a_session_without_a_known_approval_consumes_the_oldest_pending_one() -> None:
    cap = manager(slots=2)
    cap.reserve_approval(M, "old", T0)
    cap.reserve_approval(M, "new", T0 + 10)
    cap.track_session("s1", M, ends_at=T0 + 3600)
    assert cap.in_use(M, T0 + 10) == 2
    # "old" was consumed: after its TTL only "new" and the session remain
    assert cap.in_use(M, T0 + APPROVAL_TTL_SECONDS + 5) == 2
    assert cap.in_use(M, T0 + APPROVAL_TTL_SECONDS + 10) == 1


def test_rehydrated_sessions_count_without_any_approval() -> None:
    cap = manager(slots=2)
    cap.track_session("s1", M, ends_at=T0 + 60)
    cap.track_session("s2", M, ends_at=T0 + 120)
    assert not cap.can_approve(M, T0)
    assert cap.can_approve(M, T0 + 60), "s1 expired at its endsAt"


def test_tracking_a_session_again_only_moves_its_end() -> None:
    cap = manager(slots=2)
    cap.track_session("s1", M, ends_at=T0 + 60)
    cap.track_session("s1", M, ends_at=T0 + 600)
    assert cap.in_use(M, T0 + 100) == 1


def test_closing_a_session_releases_its_slot_at_once() -> None:
    cap = manager(slots=1)
    cap.track_session("s1", M, ends_at=T0 + 3600)
    assert not cap.can_approve(M, T0)
    cap.release_session("s1")
    assert cap.can_approve(M, T0)
    cap.release_session("s1")  # a second close is harmless
    cap.release_session("unknown")


def test_a_cancelled_approval_releases_its_slot() -> None:
    cap = manager(slots=1)
    cap.reserve_approval(M, "a", T0)
    cap.cancel_approval("a")
    assert cap.can_approve(M, T0)


def test_models_have_independent_slots_and_ids_ignore_case() -> None:
    cap = manager(slots=1)
    cap.reserve_approval(M.upper().replace("0X", "0x"), "a", T0)
    assert not cap.can_approve(M, T0)
    assert cap.can_approve(OTHER, T0)


def test_unknown_models_are_reported_as_such() -> None:
    cap = manager()
    assert not cap.serves("0x" + "cc" * 32) and cap.serves(M)
    with pytest.raises(UnknownModel):
        cap.can_approve("0x" + "cc" * 32, T0)
    with pytest.raises(UnknownModel):
        cap.prompt_slot("0x" + "cc" * 32)


def test_the_injected_clock_is_used_when_no_time_is_given() -> None:
    now = [T0]
    cap = CapacityManager({M: 1}, clock=lambda: now[0])
    cap.reserve_approval(M, "a")
    assert not cap.can_approve(M)
    now[0] += APPROVAL_TTL_SECONDS
    assert cap.can_approve(M)


def test_expire_and_snapshot() -> None:
    cap = manager(slots=4)
    cap.reserve_approval(M, "a", T0)
    cap.track_session("s1", M, ends_at=T0 + 30)
    cap.track_session("s2", M, ends_at=T0 + 9000)
    assert cap.snapshot(T0 + 1)[M] == {
        "slots": 4, "sessions": 2, "pendingApprovals": 0, "promptsInFlight": 0,
    }  # fmt: skip
    cap.expire(T0 + 60)
    assert cap.snapshot(T0 + 60)[M]["sessions"] == 1


def test_slots_must_be_positive() -> None:
    with pytest.raises(ValueError, match="slots"):
        CapacityManager({M: 0})


async def test_prompt_slots_refuse_at_once_when_all_are_busy() -> None:
    cap = manager(slots=2)
    async with cap.prompt_slot(M), cap.prompt_slot(M):
        assert cap.prompts_in_flight(M) == 2
        with pytest.raises(NoCapacity, match="prompt"):
            async with cap.prompt_slot(M):
                pytest.fail("a third prompt must not run")
        async with cap.prompt_slot(OTHER):  # other models are unaffected
            pass
    assert cap.prompts_in_flight(M) == 0


async def test_a_failing_prompt_gives_its_slot_back() -> None:
    cap = manager(slots=1)
    with pytest.raises(RuntimeError):
        async with cap.prompt_slot(M):
            raise RuntimeError("backend died")
    async with cap.prompt_slot(M):
        assert cap.prompts_in_flight(M) == 1
