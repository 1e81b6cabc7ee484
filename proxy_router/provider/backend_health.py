"""Is each model's backend up? Probed on demand, cached briefly, told by real prompts.

``session.request`` asks before it signs an approval: a provider whose model server
is down must refuse at once (``BACKEND_UNAVAILABLE``) rather than let the consumer
spend gas opening and closing a session on it. A probe is ``GET {base}/models``;
a good answer is kept for ``max_age_s`` so a flood costs few probes (a bad one is
rechecked at once, since the backend may be back), and a
prompt that could not reach the backend marks it down without waiting for the next.
Reasons stay generic (type of failure, HTTP status): ``/healthcheck`` is public,
and backend URLs and paths are the operator's business.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
import structlog

from proxy_router.provider.backend import OpenAIBackend

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BackendStatus:
    ok: bool
    error: str | None
    checked_at: float


class BackendMonitor:
    def __init__(self, backends: Mapping[str, OpenAIBackend], http: aiohttp.ClientSession, *,
                 max_age_s: float = 5.0, down_max_age_s: float = 0.0,
                 timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backends = backends
        self.max_age_s = max_age_s
        self.down_max_age_s = down_max_age_s
        """A backend seen down is probed again at once by default: it may be back, and a
        probe of a dead port is a refused connection, cheap (concurrent askers share it,
        and ``session.request`` is rate-limited per address)."""
        self.timeout_s = timeout_s
        self._http = http
        self._clock = clock
        self._status: dict[str, BackendStatus] = {}
        self._probes: dict[str, asyncio.Task[BackendStatus]] = {}

    async def is_up(self, model_id: str) -> bool:
        """The cached status when fresh, else one probe shared by every caller waiting."""
        status = self._status.get(model_id)
        max_age = self.max_age_s if status is None or status.ok else self.down_max_age_s
        if status is None or self._clock() - status.checked_at >= max_age:
            status = await self.probe(model_id)
        return status.ok

    async def probe(self, model_id: str) -> BackendStatus:
        task = self._probes.get(model_id)
        if task is None:
            task = asyncio.create_task(self._probe(model_id))
            self._probes[model_id] = task
            task.add_done_callback(lambda _: self._probes.pop(model_id, None))
        return await asyncio.shield(task)

    async def _probe(self, model_id: str) -> BackendStatus:
        backend = self.backends[model_id]
        try:
            async with self._http.get(backend.base_url + "/models",
                                      timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as r:
                error = None if r.status == 200 else f"HTTP {r.status}"
        except TimeoutError:
            error = "timed out"
        except (aiohttp.ClientError, OSError) as exc:
            log.info("backend_probe_failed", model=backend.model_name, error=str(exc))
            error = f"unreachable ({type(exc).__name__})"
        return self._set(model_id, error)

    def mark_down(self, model_id: str, reason: str = "unreachable") -> None:
        self._set(model_id, reason)

    def mark_up(self, model_id: str) -> None:
        self._set(model_id, None)

    def _set(self, model_id: str, error: str | None) -> BackendStatus:
        status = BackendStatus(error is None, error, self._clock())
        self._status[model_id] = status
        return status

    async def health(self) -> dict[str, dict[str, object]]:
        """One ``/healthcheck`` component per model, probed now."""
        out: dict[str, dict[str, object]] = {}
        for model_id, backend in self.backends.items():
            status = await self.probe(model_id)
            out[f"backend:{backend.model_name}"] = {"ok": status.ok, "modelId": model_id,
                                                    "error": status.error}
        return out
