"""Approvals a provider has signed and not yet seen used, bounded per requester and in all.

An approval is free to ask for, so it reserves nothing: capacity is taken only by a
session opened on chain (``CapacityManager.track_session``). What this ledger bounds
is the work and memory a stranger can cause: each requester holds at most
``per_user`` unused approvals, the ledger at most ``max_entries`` in all, and an entry
lives only until the contract would refuse its approval anyway (the approval TTL)
or until its session opens. Refused requests never reach it.

It also makes approval timestamps unique per (user, bid): an approval has no nonce,
so two for the same user and bid in the same second would be byte-identical and the
contract accepts an approval once; stepping back a second keeps it valid.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass

APPROVAL_TTL_SECONDS = 600
"""The contract's approval lifetime (``openSession`` refuses older approvals)."""


class TooManyApprovals(Exception):
    """The requester (or everyone together) holds the most unused approvals allowed."""


@dataclass(frozen=True, slots=True)
class _Entry:
    user: str
    bid_id: str
    timestamp: int
    session_id: str


class ApprovalLedger:
    def __init__(self, *, per_user: int = 3, max_entries: int = 50_000,
                 ttl_s: int = APPROVAL_TTL_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.per_user = per_user
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._issued: dict[str, _Entry] = {}
        """Every approval signed in the last TTL, used or not (for unique timestamps)."""
        self._unused: dict[str, list[str]] = {}
        """Per user, the session ids of approvals not yet seen opened."""
        self._stamps: dict[tuple[str, str], set[int]] = {}
        """Per (user, bid), the timestamps of approvals issued in the last TTL."""
        self._expiry: list[tuple[int, str]] = []  # (timestamp + ttl, session id)

    def __len__(self) -> int:
        """Unused approvals outstanding."""
        self._expire()
        return sum(map(len, self._unused.values()))

    @property
    def users(self) -> int:
        return len(self._unused)

    @property
    def issued(self) -> int:
        return len(self._issued)

    def outstanding(self, user: str) -> int:
        self._expire()
        return len(self._unused.get(user.lower(), ()))

    def sessions_of(self, user: str) -> list[str]:
        """The session ids the user's unused approvals would open."""
        self._expire()
        return list(self._unused.get(user.lower(), ()))

    def check(self, user: str) -> None:
        """Raise ``TooManyApprovals`` unless one more approval for ``user`` fits."""
        self._expire()
        if len(self._unused.get(user.lower(), ())) >= self.per_user:
            raise TooManyApprovals(
                f"{self.per_user} unused approvals already issued to this address; "
                "open a session with one or wait for it to expire")
        if len(self._issued) >= self.max_entries:
            raise TooManyApprovals("too many approvals issued recently; retry later")

    def timestamp_for(self, user: str, bid_id: str, now: int) -> int:
        """``now``, or the latest earlier second not yet used for (user, bid)."""
        used = self._stamps.get((user.lower(), bid_id), set())
        stamp = now
        while stamp in used:
            stamp -= 1
        return stamp

    def add(self, user: str, bid_id: str, timestamp: int, session_id: str) -> None:
        """Record a signed approval under the session id it will open (see the contract)."""
        entry = _Entry(user.lower(), bid_id, timestamp, session_id.lower())
        self._issued[entry.session_id] = entry
        self._stamps.setdefault((entry.user, bid_id), set()).add(timestamp)
        self._unused.setdefault(entry.user, []).append(entry.session_id)
        heapq.heappush(self._expiry, (timestamp + self.ttl_s, entry.session_id))

    def consume(self, session_id: str) -> bool:
        """The approval's session opened on chain: it no longer counts. True if it did."""
        entry = self._issued.get(session_id.lower())
        if entry is None:
            return False
        sessions = self._unused.get(entry.user)
        if sessions is None or entry.session_id not in sessions:
            return False
        sessions.remove(entry.session_id)
        if not sessions:
            del self._unused[entry.user]
        return True

    def _expire(self) -> None:
        now = self._clock()
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, session_id = heapq.heappop(heap)
            self.consume(session_id)
            entry = self._issued.pop(session_id, None)
            if entry is not None:
                key = (entry.user, entry.bid_id)
                stamps = self._stamps.get(key)
                if stamps is not None:
                    stamps.discard(entry.timestamp)
                    if not stamps:
                        del self._stamps[key]
