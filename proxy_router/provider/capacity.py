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
  `prompts_per_session` per session, so one cheap session cannot hold every slot;
  the next one fails fast (`NoCapacity`, `SessionBusy`) instead of queueing.

Single event loop, no awaits inside the bookkeeping: every method is atomic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from proxy_router.provider.models_config import normalize_model_id


class NoCapacity(Exception):
    """All slots of the model are taken."""

    def __init__(self, model_id: str, slots: int, what: str) -> None:
        self.model_id = model_id
        self.slots = slots
        super().__init__(f"no free {what} slot for model {model_id} ({slots} slots)")


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


class PromptSlot:
    """`async with` guard holding one prompt slot; a class, not a generator, to stay cheap."""

    __slots__ = ("_manager", "_model_id", "_session_id", "_state")

    def __init__(self, manager: CapacityManager, model_id: str, state: _ModelState,
                 session_id: str | None) -> None:
        self._manager = manager
        self._model_id = model_id
        self._state = state
        self._session_id = session_id

    async def __aenter__(self) -> None:
        state = self._state
        sid = self._session_id
        per_session = self._manager.session_prompts
        if sid is not None and per_session.get(sid, 0) >= self._manager.prompts_per_session:
            raise SessionBusy(sid, self._manager.prompts_per_session)
        if state.prompts >= state.slots:
            raise NoCapacity(self._model_id, state.slots, "prompt")
        state.prompts += 1
        if sid is not None:
            per_session[sid] = per_session.get(sid, 0) + 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state.prompts -= 1
        sid = self._session_id
        if sid is not None:
            per_session = self._manager.session_prompts
            left = per_session.get(sid, 1) - 1
            if left > 0:
                per_session[sid] = left
            else:
                per_session.pop(sid, None)


class CapacityManager:
    """Slot accounting per model id (case-insensitive hex). Times are unix seconds."""

    def __init__(
        self,
        slots_by_model: Mapping[str, int],
        *,
        prompts_per_session: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if prompts_per_session < 1:
            raise ValueError("prompts_per_session must be >= 1")
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
        """`async with capacity.prompt_slot(m, s):` — NoCapacity / SessionBusy at once."""
        mid, state = self._state(model_id)
        return PromptSlot(self, mid, state, session_id)

    def prompts_in_flight(self, model_id: str) -> int:
        return self._state(model_id)[1].prompts

    def snapshot(self, now: float | None = None) -> dict[str, dict[str, int]]:
        """Per model: slots, open sessions, prompts (for provider.capabilities)."""
        t = self._now(now)
        self.expire(t)
        return {
            mid: {"slots": s.slots, "sessions": len(s.sessions), "promptsInFlight": s.prompts,
                  "promptsPerSession": self.prompts_per_session}
            for mid, s in self._models.items()
        }
