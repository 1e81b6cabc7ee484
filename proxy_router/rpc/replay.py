"""Reject stale and replayed frames without unbounded memory.

A frame is accepted only while ``|now − timestamp| ≤ window``. That bound is
what makes the nonce memory finite: a nonce needs remembering only until its
frame would be rejected as stale anyway (``timestamp + window``), after which
it is dropped. Memory is therefore ``rate × 2·window`` at most, and a hard cap
makes the guard fail closed (``RATE_LIMITED``) rather than forget nonces.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from .errors import ErrorCode, RpcError


class ReplayGuard:
    """Remembers ``(sender, nonce)`` pairs for as long as their timestamp is fresh."""

    def __init__(self, window_s: float = 60.0, *, max_entries: int = 1_000_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._expiry: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, sender: str, timestamp: int, nonce: str) -> None:
        """Accept and remember a frame, or raise ``STALE_MESSAGE``/``REPLAYED_MESSAGE``."""
        now = self._clock()
        self._expire(now)
        self.check_fresh(timestamp, now)
        key = (sender.lower(), nonce)
        if key in self._seen:
            raise RpcError(ErrorCode.REPLAYED_MESSAGE, "nonce already used by this sender")
        if len(self._seen) >= self.max_entries:
            raise RpcError(ErrorCode.RATE_LIMITED, "too many messages in the replay window")
        expires = timestamp + self.window_s
        self._seen[key] = expires
        heapq.heappush(self._expiry, (expires, key))

    def check_fresh(self, timestamp: int, now: float | None = None) -> None:
        """Raise ``STALE_MESSAGE`` (with the server's clock) if outside the window."""
        now = self._clock() if now is None else now
        if abs(now - timestamp) > self.window_s:
            raise RpcError(
                ErrorCode.STALE_MESSAGE,
                f"timestamp is more than {self.window_s:g} s from the receiver's clock",
                {"serverTime": int(now)},
            )

    def _expire(self, now: float) -> None:
        heap = self._expiry
        while heap and heap[0][0] < now:
            _, key = heapq.heappop(heap)
            self._seen.pop(key, None)
