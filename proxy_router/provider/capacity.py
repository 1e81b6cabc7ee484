"""Per-model capacity of a provider: how many sessions it may approve, how many prompts run.

Two limits share each model's `concurrentSlots`:

- **Approvals.** A session occupies a slot from the moment the provider signs its
  approval until the session ends. An approval not yet opened on chain holds its
  slot for the contract's approval TTL (10 min); after that the contract would
  reject it anyway. So a provider with N slots never has more than N sessions in
  flight, whatever consumers do with the approvals they got.
- **Prompts.** At most N prompts stream at once per model; the next one fails fast
  with `NoCapacity` instead of queueing, so the consumer can fail over at once.

Single event loop, no awaits inside the bookkeeping: every method is atomic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from proxy_router.provider.models_config import normalize_model_id

APPROVAL_TTL_SECONDS = 600.0


class NoCapacity(Exception):
    """All slots of the model are taken."""

    def __init__(self, model_id: str, slots: int, what: str) -> None:
        self.model_id = model_id
        self.slots = slots
        super().__init__(f"no free {what} slot for model {model_id} ({slots} slots)")


class UnknownModel(LookupError):
    """The model is not served by this provider."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"model {model_id} is not served here")


@dataclass
class _ModelState:
    slots: int
    sessions: dict[str, float] = field(default_factory=dict)  # session id -> endsAt
    pending: dict[str, float] = field(default_factory=dict)  # approval key -> expiry
    prompts: int = 0


class PromptSlot:
    """`async with` guard holding one prompt slot; a class, not a generator, to stay cheap."""

    __slots__ = ("_model_id", "_state")

    def __init__(self, model_id: str, state: _ModelState) -> None:
        self._model_id = model_id
        self._state = state

    async def __aenter__(self) -> None:
        state = self._state
        if state.prompts >= state.slots:
            raise NoCapacity(self._model_id, state.slots, "prompt")
        state.prompts += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state.prompts -= 1


class CapacityManager:
    """Slot accounting per model id (case-insensitive hex). Times are unix seconds."""

    def __init__(
        self,
        slots_by_model: Mapping[str, int],
        *,
        approval_ttl: float = APPROVAL_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._models: dict[str, _ModelState] = {}
        for model_id, slots in slots_by_model.items():
            if slots < 1:
                raise ValueError(f"model {model_id}: slots must be >= 1, got {slots}")
            self._models[normalize_model_id(model_id)] = _ModelState(slots)
        self._approval_ttl = approval_ttl
        self._clock = clock
        self._session_model: dict[str, str] = {}
        self._approval_model: dict[str, str] = {}

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
        if state.pending:
            for key in [k for k, exp in state.pending.items() if exp <= now]:
                del state.pending[key]
                self._approval_model.pop(key, None)

    def _used(self, state: _ModelState, now: float) -> int:
        self._purge(state, now)
        return len(state.sessions) + len(state.pending)

    def serves(self, model_id: str) -> bool:
        return normalize_model_id(model_id) in self._models

    def slots(self, model_id: str) -> int:
        return self._state(model_id)[1].slots

    def in_use(self, model_id: str, now: float | None = None) -> int:
        """Running sessions plus unexpired pending approvals of the model."""
        return self._used(self._state(model_id)[1], self._now(now))

    def can_approve(self, model_id: str, now: float | None = None) -> bool:
        """Whether one more approval fits. Raises UnknownModel for a model not served."""
        _, state = self._state(model_id)
        return self._used(state, self._now(now)) < state.slots

    def reserve_approval(self, model_id: str, approval_key: str, now: float | None = None) -> None:
        """Hold a slot for an approval about to be signed; NoCapacity when full.

        Idempotent per `approval_key` (a retried request does not take two slots).
        The hold lapses after the approval TTL unless `track_session` claims it.
        """
        mid, state = self._state(model_id)
        t = self._now(now)
        if approval_key in state.pending and state.pending[approval_key] > t:
            return
        if self._used(state, t) >= state.slots:
            raise NoCapacity(mid, state.slots, "session")
        state.pending[approval_key] = t + self._approval_ttl
        self._approval_model[approval_key] = mid

    def cancel_approval(self, approval_key: str) -> None:
        """Give back the slot of an approval that will not be used (e.g. signing failed)."""
        mid = self._approval_model.pop(approval_key, None)
        if mid is not None:
            self._models[mid].pending.pop(approval_key, None)

    def track_session(
        self,
        session_id: str,
        model_id: str,
        ends_at: float,
        approval_key: str | None = None,
    ) -> None:
        """Count an opened session until `ends_at`; it takes over its approval's slot.

        Every session on our bids was opened with one of our approvals, so when the
        key is unknown the model's oldest pending approval is the one consumed.
        Calling again for the same session (restart rehydration, event replay)
        only updates its end.
        """
        mid, state = self._state(model_id)
        known = self._session_model.get(session_id)
        if known is not None:
            self._models[known].sessions[session_id] = ends_at
            return
        if approval_key is not None and approval_key in state.pending:
            del state.pending[approval_key]
            self._approval_model.pop(approval_key, None)
        elif approval_key is None and state.pending:
            oldest = min(state.pending, key=state.pending.__getitem__)
            del state.pending[oldest]
            self._approval_model.pop(oldest, None)
        state.sessions[session_id] = ends_at
        self._session_model[session_id] = mid

    def release_session(self, session_id: str) -> None:
        """Free the slot of a closed session (no-op for unknown ids)."""
        mid = self._session_model.pop(session_id, None)
        if mid is not None:
            self._models[mid].sessions.pop(session_id, None)

    def expire(self, now: float | None = None) -> None:
        """Drop ended sessions and lapsed approvals everywhere (also done lazily)."""
        t = self._now(now)
        for state in self._models.values():
            self._purge(state, t)

    def prompt_slot(self, model_id: str) -> PromptSlot:
        """`async with capacity.prompt_slot(m):` — NoCapacity at once when all are busy."""
        mid, state = self._state(model_id)
        return PromptSlot(mid, state)

    def prompts_in_flight(self, model_id: str) -> int:
        return self._state(model_id)[1].prompts

    def snapshot(self, now: float | None = None) -> dict[str, dict[str, int]]:
        """Per model: slots, sessions, pending approvals, prompts (for provider.capabilities)."""
        t = self._now(now)
        self.expire(t)
        return {
            mid: {
                "slots": s.slots,
                "sessions": len(s.sessions),
                "pendingApprovals": len(s.pending),
                "promptsInFlight": s.prompts,
            }
            for mid, s in self._models.items()
        }
