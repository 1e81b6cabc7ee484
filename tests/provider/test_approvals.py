"""ApprovalLedger: unused approvals are capped per requester and in all, live no longer
than the contract's approval TTL, and never repeat a (user, bid, timestamp)."""

from __future__ import annotations

import pytest

from proxy_router.provider.approvals import APPROVAL_TTL_SECONDS, ApprovalLedger, TooManyApprovals

T0 = 1_700_000_000
BID = "0x" + "ab" * 32


def ledger(now: list[float], **kw: int) -> ApprovalLedger:
    return ApprovalLedger(clock=lambda: now[0], **kw)


def test_a_requester_holds_at_most_per_user_unused_approvals() -> None:
    now = [float(T0)]
    book = ledger(now, per_user=2)
    for i in range(2):
        book.check("0xAA")
        book.add("0xAA", BID, T0 - i, f"0x{i:064x}")
    with pytest.raises(TooManyApprovals):
        book.check("0xaa")
    book.check("0xbb")  # another requester is not affected
    assert len(book) == 2 and book.users == 1


def test_an_opened_session_gives_its_approval_back_but_keeps_its_timestamp_taken() -> None:
    now = [float(T0)]
    book = ledger(now, per_user=1)
    book.add("0xaa", BID, T0, "0x01")
    assert book.consume("0x01") and not book.consume("0x01")
    book.check("0xaa")
    assert book.timestamp_for("0xaa", BID, T0) == T0 - 1, "an approval must never repeat"
    assert book.timestamp_for("0xaa", "0x" + "cd" * 32, T0) == T0


def test_entries_expire_with_the_approval_ttl_so_memory_is_bounded() -> None:
    now = [float(T0)]
    book = ledger(now, per_user=1)
    for i in range(100):
        book.add(f"0x{i:040x}", BID, T0, f"0x{i:064x}")
    assert len(book) == 100 and book.issued == 100
    now[0] = T0 + APPROVAL_TTL_SECONDS
    assert len(book) == 0 and book.issued == 0 and book.users == 0
    assert book._stamps == {}, "no per-(user, bid) entry outlives its approvals"


def test_the_ledger_as_a_whole_is_capped() -> None:
    now = [float(T0)]
    book = ledger(now, per_user=5, max_entries=3)
    for i in range(3):
        book.add(f"0x{i:040x}", BID, T0, f"0x{i:064x}")
    with pytest.raises(TooManyApprovals, match="retry later"):
        book.check("0x" + "ee" * 20)
