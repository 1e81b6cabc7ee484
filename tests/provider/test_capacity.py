"""CapacityManager: only sessions opened on chain take a slot (approvals are free and
reserve nothing), at most N prompts of a model stream at once, and one session runs at
most ``prompts_per_session`` of them."""

from __future__ import annotations

import pytest

from proxy_router.provider.capacity import (
    CapacityManager,
    NoCapacity,
    SessionBusy,
    UnknownModel,
)

M = "0x" + "aa" * 32
OTHER = "0x" + "bb" * 32
T0 = 1_700_000_000.0


def manager(slots: int = 2, prompts_per_session: int = 1) -> CapacityManager:
    return CapacityManager({M: slots, OTHER: 1}, clock=lambda: T0,
                           prompts_per_session=prompts_per_session)


def test_approves_while_open_sessions_leave_a_slot() -> None:
    cap = manager(slots=2)
    cap.track_session("s1", M, ends_at=T0 + 600)
    assert cap.can_approve(M, T0)
    cap.check_approve(M, T0)
    cap.track_session("s2", M, ends_at=T0 + 600)
    assert not cap.can_approve(M, T0)
    with pytest.raises(NoCapacity, match="2 slots"):
        cap.check_approve(M, T0)


def test_asking_for_approvals_reserves_nothing() -> None:
    cap = manager(slots=1)
    for _ in range(10):
        cap.check_approve(M, T0)
    assert cap.in_use(M, T0) == 0


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


def test_models_have_independent_slots_and_ids_ignore_case() -> None:
    cap = manager(slots=1)
    cap.track_session("s1", M.upper().replace("0X", "0x"), ends_at=T0 + 60)
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
    cap.track_session("s1", M, ends_at=T0 + 60)
    assert not cap.can_approve(M)
    now[0] += 60
    assert cap.can_approve(M)


def test_expire_and_snapshot() -> None:
    cap = manager(slots=4)
    cap.track_session("s1", M, ends_at=T0 + 30)
    cap.track_session("s2", M, ends_at=T0 + 9000)
    assert cap.snapshot(T0 + 1)[M] == {
        "slots": 4, "sessions": 2, "promptsInFlight": 0, "promptsPerSession": 1,
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


async def test_one_session_runs_one_prompt_at_a_time_by_default() -> None:
    cap = manager(slots=4)
    async with cap.prompt_slot(M, "s1"):
        with pytest.raises(SessionBusy, match="1 prompt"):
            async with cap.prompt_slot(M, "s1"):
                pytest.fail("a second prompt on the same session must not run")
        async with cap.prompt_slot(M, "s2"):  # another session still gets a slot
            assert cap.prompts_in_flight(M) == 2
    assert cap.session_prompts == {}, "no per-session entry outlives its prompts"
    async with cap.prompt_slot(M, "s1"):
        pass


async def test_prompts_per_session_is_configurable() -> None:
    cap = manager(slots=4, prompts_per_session=2)
    async with cap.prompt_slot(M, "s1"), cap.prompt_slot(M, "s1"):
        with pytest.raises(SessionBusy):
            async with cap.prompt_slot(M, "s1"):
                pass
    assert cap.session_prompts == {}
