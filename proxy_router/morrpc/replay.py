"""Reject stale and replayed frames without unbounded memory.

A frame is accepted only while ``|now − timestamp| ≤ window``. That bound is
what makes the nonce memory finite: a nonce needs remembering only until its
frame would be rejected as stale anyway (``timestamp + window``), after which
it is dropped. Memory is therefore ``rate × 2·window`` at most, and a hard cap
makes the guard fail closed (``RATE_LIMITED``) rather than forget nonces.

Nonces live in memory only, so a restart would forget them: ``not_before`` (the
process start) refuses every frame signed before it, which is every frame a
previous run could have seen. Keys are 16-byte digests, to keep the window small.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Callable

from .errors import ErrorCode, RpcError


class ReplayGuard:
    """Remembers ``(sender, nonce)`` pairs for as long as their timestamp is fresh."""

    def __init__(self, window_s: float = 60.0, *, max_entries: int = 1_000_000,
                 clock: Callable[[], float] = time.time,
                 not_before: float | None = None) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._clock = clock
        self.not_before = int(not_before) if not_before is not None else None
        self._seen: dict[bytes, float] = {}
        self._expiry: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, sender: str, timestamp: int, nonce: str) -> None:
        """Accept and remember a frame, or raise ``STALE_MESSAGE``/``REPLAYED_MESSAGE``."""
        now = self._clock()
        self._expire(now)
        self.check_fresh(timestamp, now)
        key = hashlib.blake2b(f"{sender.lower()}\x00{nonce}".encode(), digest_size=16).digest()
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
        if self.not_before is not None and timestamp < self.not_before:
            raise RpcError(ErrorCode.STALE_MESSAGE, "frame was signed before this router started",
                           {"serverTime": int(now)})
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
