"""Per-model capacity of a provider: how many sessions it approves, how many prompts run.

Two limits share each model's `concurrentSlots`:

- **Sessions.** Only a session opened on chain takes a slot (from its
  `SessionOpened` event, or the first prompt's chain check, until its end or its
  `SessionClosed`). An approval is free to ask for, so it reserves nothing: a new
  approval is signed only while the opened sessions leave a slot free. Approvals
  signed in the same moment may all be opened, so sessions can exceed slots by the
  approvals outstanding (bounded per requester, see `approvals.py`); the prompt
  limit below is what protects the backend, and it is hard.
- **Prompts.** At most N prompts stream at once per model, and at most
  `prompts_per_session` per session (those waiting included), so one cheap session
  cannot hold every slot: its next prompt fails fast (`SessionBusy`). A prompt asking
  for several choices (`n`) also takes what slots are free beside its own, never
  waiting for them (`extra_slots`).

A prompt that finds every slot of its model busy waits for one in the model's FIFO
(a burst of requests is served in turn, not refused): at most `queue_depth` wait, each
at most `queue_wait_s`, then `NoCapacity` with a Retry-After estimate. A slot freed is
handed to the first waiter at once, so a newcomer never overtakes the queue; a waiter
that gives up (its client went away) leaves its place to the next.

Single event loop, no awaits inside the bookkeeping: every method is atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol

from proxy_router.provider.models_config import normalize_model_id

QUEUE_DEPTH = 32
"""Prompts of one model that may wait for a slot (the ``PROMPT_QUEUE_DEPTH`` default)."""
QUEUE_WAIT_S = 30.0
"""Longest wait for a slot (``PROMPT_QUEUE_WAIT_S``), below the consumers' default
first-token timeout (60 s): a consumer must not take a queued prompt for a dead provider."""
_MAX_RETRY_AFTER_S = 60
_HOLD_WEIGHT = 0.2  # of the newest prompt in the moving average of how long one holds a slot

QueueOutcome = Literal["served", "full", "timeout", "cancelled"]
"""How a prompt left the queue: got a slot (``served``, also when one was free at once),
found the queue full, waited its longest, or its caller gave up."""


class QueueObserver(Protocol):
    """Told about the queue (the metrics); called inside the bookkeeping, so cheap."""

    def queue_depth(self, model_id: str, depth: int) -> None: ...

    def queue_left(self, model_id: str, waited_s: float, outcome: QueueOutcome) -> None: ...


class NoCapacity(Exception):
    """All slots of the model are taken (and, for prompts, its queue is full or the wait
    ran out); ``retry_after_s`` estimates when one frees."""

    def __init__(self, model_id: str, slots: int, what: str, detail: str = "",
                 retry_after_s: int = 1) -> None:
        self.model_id = model_id
        self.slots = slots
        self.retry_after_s = retry_after_s
        super().__init__(f"no free {what} slot for model {model_id} ({slots} slots{detail})")


class SessionBusy(Exception):
    """The session already runs as many prompts as one session may."""

    def __init__(self, session_id: str, limit: int) -> None:
        self.session_id = session_id
        self.limit = limit
        super().__init__(f"session {session_id} already has {limit} prompt(s) in flight")


class UnknownModel(LookupError):
    """The model is not served by this provider."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"model {model_id} is not served here")


@dataclass
class _ModelState:
    slots: int
    sessions: dict[str, float] = field(default_factory=dict)  # session id -> endsAt
    prompts: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    """Prompts waiting for a slot, first come first served (a granted or abandoned
    future leaves at once)."""
    hold_s: float = 1.0
    """Moving average of how long a prompt holds a slot (for Retry-After)."""

    def retry_after_s(self) -> int:
        """Seconds until the queue, as it stands, has likely moved by one place."""
        estimate = self.hold_s * (len(self.waiters) + 1) / self.slots
        return min(max(math.ceil(estimate), 1), _MAX_RETRY_AFTER_S)


class PromptSlot:
    """`async with` guard holding one prompt slot; a class, not a generator, to stay cheap."""

    __slots__ = ("_held_since", "_manager", "_model_id", "_session_id", "_state")

    def __init__(self, manager: CapacityManager, model_id: str, state: _ModelState,
                 session_id: str | None) -> None:
        self._manager = manager
        self._model_id = model_id
        self._state = state
        self._session_id = session_id
        self._held_since = 0.0

    async def __aenter__(self) -> None:
        manager = self._manager
        sid = self._session_id
        per_session = manager.session_prompts
        if sid is not None:
            if per_session.get(sid, 0) >= manager.prompts_per_session:
                raise SessionBusy(sid, manager.prompts_per_session)
            per_session[sid] = per_session.get(sid, 0) + 1  # a waiting prompt counts
        try:
            await manager._take_slot(self._model_id, self._state)
        except BaseException:
            self._leave_session()
            raise
        self._held_since = time.monotonic()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self._state
        held = time.monotonic() - self._held_since
        state.hold_s += _HOLD_WEIGHT * (held - state.hold_s)
        self._manager._give_slot(self._model_id, state)
        self._leave_session()

    def _leave_session(self) -> None:
        sid = self._session_id
        if sid is not None:
            per_session = self._manager.session_prompts
            left = per_session.get(sid, 1) - 1
            if left > 0:
                per_session[sid] = left
            else:
                per_session.pop(sid, None)


class ExtraSlots:
    """`with` guard holding the free slots a prompt could take beside its own (see
    `CapacityManager.extra_slots`); `held` says how many it got, maybe none."""

    __slots__ = ("_manager", "_model_id", "_state", "_wanted", "held")

    def __init__(self, manager: CapacityManager, model_id: str, state: _ModelState,
                 wanted: int) -> None:
        self._manager = manager
        self._model_id = model_id
        self._state = state
        self._wanted = wanted
        self.held = 0

    def __enter__(self) -> ExtraSlots:
        state = self._state
        if not state.waiters:  # a queued prompt is never overtaken
            self.held = max(0, min(self._wanted, state.slots - state.prompts))
            state.prompts += self.held
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        held, self.held = self.held, 0
        for _ in range(held):
            self._manager._give_slot(self._model_id, self._state)


class CapacityManager:
    """Slot accounting per model id (case-insensitive hex). Times are unix seconds."""

    def __init__(
        self,
        slots_by_model: Mapping[str, int],
        *,
        prompts_per_session: int = 1,
        clock: Callable[[], float] = time.time,
        queue_depth: int = 0,
        queue_wait_s: float = 0.0,
        observer: QueueObserver | None = None,
    ) -> None:
        """``queue_depth`` 0 (or ``queue_wait_s`` 0) refuses a prompt at once when every
        slot is busy."""
        if prompts_per_session < 1:
            raise ValueError("prompts_per_session must be >= 1")
        if queue_depth < 0 or queue_wait_s < 0:
            raise ValueError("queue_depth and queue_wait_s must be >= 0")
        self.queue_depth = queue_depth
        self.queue_wait_s = queue_wait_s
        self._observer = observer
        self._models: dict[str, _ModelState] = {}
        for model_id, slots in slots_by_model.items():
            if slots < 1:
                raise ValueError(f"model {model_id}: slots must be >= 1, got {slots}")
            self._models[normalize_model_id(model_id)] = _ModelState(slots)
        self.prompts_per_session = prompts_per_session
        self.session_prompts: dict[str, int] = {}
        """Prompts in flight per session id (entries exist only while > 0)."""
        self._clock = clock
        self._session_model: dict[str, str] = {}

    def _state(self, model_id: str) -> tuple[str, _ModelState]:
        mid = normalize_model_id(model_id)
        state = self._models.get(mid)
        if state is None:
            raise UnknownModel(mid)
        return mid, state

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _purge(self, state: _ModelState, now: float) -> None:
        if state.sessions:
            for sid in [s for s, ends in state.sessions.items() if ends <= now]:
                del state.sessions[sid]
                self._session_model.pop(sid, None)

    def serves(self, model_id: str) -> bool:
        return normalize_model_id(model_id) in self._models

    def slots(self, model_id: str) -> int:
        return self._state(model_id)[1].slots

    def in_use(self, model_id: str, now: float | None = None) -> int:
        """Sessions of the model open now."""
        _, state = self._state(model_id)
        self._purge(state, self._now(now))
        return len(state.sessions)

    def can_approve(self, model_id: str, now: float | None = None) -> bool:
        """Whether open sessions leave a slot. Raises UnknownModel for a model not served."""
        return self.in_use(model_id, now) < self.slots(model_id)

    def check_approve(self, model_id: str, now: float | None = None) -> None:
        """Raise `NoCapacity` when every slot of the model holds an open session."""
        if not self.can_approve(model_id, now):
            mid, state = self._state(model_id)
            raise NoCapacity(mid, state.slots, "session")

    def track_session(self, session_id: str, model_id: str, ends_at: float) -> None:
        """Count an opened session until `ends_at` (again for the same id: update its end)."""
        mid, state = self._state(model_id)
        known = self._session_model.get(session_id)
        if known is not None:
            self._models[known].sessions[session_id] = ends_at
            return
        state.sessions[session_id] = ends_at
        self._session_model[session_id] = mid

    def tracks(self, session_id: str) -> bool:
        return session_id in self._session_model

    def release_session(self, session_id: str) -> None:
        """Free the slot of a closed session (no-op for unknown ids)."""
        mid = self._session_model.pop(session_id, None)
        if mid is not None:
            self._models[mid].sessions.pop(session_id, None)

    def expire(self, now: float | None = None) -> None:
        """Drop ended sessions everywhere (also done lazily)."""
        t = self._now(now)
        for state in self._models.values():
            self._purge(state, t)

    def prompt_slot(self, model_id: str, session_id: str | None = None) -> PromptSlot:
        """`async with capacity.prompt_slot(m, s):` — SessionBusy at once; when every
        slot is busy, a wait in the model's queue, then NoCapacity if it is full or the
        wait runs out."""
        mid, state = self._state(model_id)
        return PromptSlot(self, mid, state, session_id)

    def extra_slots(self, model_id: str, wanted: int) -> ExtraSlots:
        """`with capacity.extra_slots(m, k) as extra:` — up to `k` more prompt slots for
        a prompt that holds one already (its `n` choices), taken at once or not at all:
        only slots free while nobody waits, so the model's queue is never overtaken, and
        not counted against `prompts_per_session` (they serve the same prompt). Freed on
        exit, to the first waiter."""
        mid, state = self._state(model_id)
        return ExtraSlots(self, mid, state, wanted)

    def prompts_in_flight(self, model_id: str) -> int:
        return self._state(model_id)[1].prompts

    def queued(self, model_id: str) -> int:
        """Prompts of the model waiting for a slot."""
        return len(self._state(model_id)[1].waiters)

    async def _take_slot(self, model_id: str, state: _ModelState) -> None:
        """A slot now if one is free and nobody waits, else a place in the queue."""
        observer = self._observer
        if state.prompts < state.slots and not state.waiters:
            state.prompts += 1
            if observer is not None:
                observer.queue_left(model_id, 0.0, "served")
            return
        if len(state.waiters) >= self.queue_depth or self.queue_wait_s <= 0:
            if observer is not None:
                observer.queue_left(model_id, 0.0, "full")
            raise NoCapacity(model_id, state.slots, "prompt",
                             f", {len(state.waiters)} waiting", state.retry_after_s())
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.waiters.append(granted)
        self._depth_changed(model_id, state)
        started = time.monotonic()
        outcome: QueueOutcome = "served"
        try:
            async with asyncio.timeout(self.queue_wait_s):
                await granted
        except TimeoutError:
            if granted.done() and not granted.cancelled():  # came as the time ran out
                return
            outcome = "timeout"
            self._leave_queue(model_id, state, granted)
            raise NoCapacity(model_id, state.slots, "prompt",
                             f"; waited {self.queue_wait_s:g} s",
                             state.retry_after_s()) from None
        except BaseException:  # the caller went away
            outcome = "cancelled"
            if granted.done() and not granted.cancelled():
                self._give_slot(model_id, state)  # granted meanwhile: pass it on
            else:
                self._leave_queue(model_id, state, granted)
            raise
        finally:
            if observer is not None:
                observer.queue_left(model_id, time.monotonic() - started, outcome)

    def _leave_queue(self, model_id: str, state: _ModelState,
                     waiter: asyncio.Future[None]) -> None:
        waiter.cancel()
        with contextlib.suppress(ValueError):
            state.waiters.remove(waiter)
        self._depth_changed(model_id, state)

    def _give_slot(self, model_id: str, state: _ModelState) -> None:
        """Free a slot: straight to the first waiter still waiting, if any."""
        state.prompts -= 1
        handed = False
        while state.waiters and state.prompts < state.slots:
            waiter = state.waiters.popleft()
            if not waiter.done():
                state.prompts += 1
                waiter.set_result(None)
                handed = True
        if handed:
            self._depth_changed(model_id, state)

    def _depth_changed(self, model_id: str, state: _ModelState) -> None:
        if self._observer is not None:
            self._observer.queue_depth(model_id, len(state.waiters))

    def snapshot(self, now: float | None = None) -> dict[str, dict[str, int]]:
        """Per model: slots, open sessions, prompts (for provider.capabilities)."""
        t = self._now(now)
        self.expire(t)
        return {
            mid: {"slots": s.slots, "sessions": len(s.sessions), "promptsInFlight": s.prompts,
                  "promptsPerSession": self.prompts_per_session}
            for mid, s in self._models.items()
        }
