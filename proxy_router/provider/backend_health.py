"""Is each model's backend up? Probed on demand, cached briefly, told by real prompts.

``session.request`` asks before it signs an approval: a provider whose model server
is down must refuse at once (``BACKEND_UNAVAILABLE``) rather than let the consumer
spend gas opening and closing a session on it. A probe is ``GET {base}/models``;
a good answer is kept for ``max_age_s`` so a flood costs few probes (a bad one is
rechecked at once, since the backend may be back), and a
prompt that could not reach the backend marks it down without waiting for the next.
Reasons stay generic (type of failure, HTTP status): ``/healthcheck`` is public,
and backend URLs and paths are the operator's business.

With several backends per model (``BackendPool``) each is probed on its own: the model
is up while any of them is, and a backend taken out (by a probe or a failed prompt) is
probed every ``recover_interval_s`` until it answers, which puts it back in the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import aiohttp
import structlog

from proxy_router.provider.backend_pool import BackendPool, BackendStatus, Member

__all__ = ["BackendMonitor", "BackendStatus"]

log = structlog.get_logger(__name__)


class BackendMonitor:
    def __init__(self, pools: Mapping[str, BackendPool], http: aiohttp.ClientSession, *,
                 max_age_s: float = 5.0, down_max_age_s: float = 0.0,
                 timeout_s: float = 2.0, recover_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pools = pools
        self.max_age_s = max_age_s
        self.down_max_age_s = down_max_age_s
        """A backend seen down is probed again at once by default: it may be back, and a
        probe of a dead port is a refused connection, cheap (concurrent askers share it,
        and ``session.request`` is rate-limited per address)."""
        self.timeout_s = timeout_s
        self.recover_interval_s = recover_interval_s
        self._http = http
        self._clock = clock
        self._probes: dict[Member, asyncio.Task[BackendStatus]] = {}
        self._recovering: dict[Member, asyncio.Task[None]] = {}
        self._closed = False
        for model_id, pool in pools.items():
            pool.clock = clock
            pool.on_down = lambda member, mid=model_id: self._recover(mid, member)

    async def is_up(self, model_id: str) -> bool:
        """Whether any backend of the model answers: a fresh good status is enough, else
        the stale ones are probed (one probe per backend shared by every caller)."""
        pool = self.pools[model_id]
        stale = []
        for member in pool.members:
            status = member.status
            max_age = self.max_age_s if status is None or status.ok else self.down_max_age_s
            if status is not None and self._clock() - status.checked_at < max_age:
                if status.ok:
                    return True
            else:
                stale.append(member)
        statuses = await asyncio.gather(*(self.probe(model_id, m) for m in stale))
        return any(s.ok for s in statuses)

    async def probe(self, model_id: str, member: Member | None = None) -> BackendStatus:
        """Probe ``member`` (the model's first backend by default) now."""
        member = member or self.pools[model_id].members[0]
        task = self._probes.get(member)
        if task is None:
            task = asyncio.create_task(self._probe(model_id, member))
            self._probes[member] = task
            task.add_done_callback(lambda _: self._probes.pop(member, None))
        return await asyncio.shield(task)

    async def _probe(self, model_id: str, member: Member) -> BackendStatus:
        pool = self.pools[model_id]
        try:
            async with self._http.get(member.backend.base_url + "/models",
                                      timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as r:
                error = None if r.status == 200 else f"HTTP {r.status}"
        except TimeoutError:
            error = "timed out"
        except (aiohttp.ClientError, OSError) as exc:
            log.info("backend_probe_failed", model=pool.model_name, backend=member.label,
                     error=str(exc))
            error = f"unreachable ({type(exc).__name__})"
        return pool.set_status(member, error)

    def _recover(self, model_id: str, member: Member) -> None:
        """Probe a backend gone down every ``recover_interval_s`` until it answers."""
        if self._closed or member in self._recovering:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._until_up(model_id, member))
        except RuntimeError:  # no loop (a synchronous caller): the next ask probes it
            return
        self._recovering[member] = task
        task.add_done_callback(lambda _: self._recovering.pop(member, None))

    async def _until_up(self, model_id: str, member: Member) -> None:
        while not (self._closed or self._http.closed):
            await asyncio.sleep(self.recover_interval_s)
            if member.up or self._http.closed or (await self.probe(model_id, member)).ok:
                return

    def mark_down(self, model_id: str, reason: str = "unreachable") -> None:
        """Every backend of the model down (a single-backend model's failed prompt)."""
        for member in self.pools[model_id].members:
            self.pools[model_id].set_status(member, reason)

    def mark_up(self, model_id: str) -> None:
        for member in self.pools[model_id].members:
            self.pools[model_id].set_status(member, None)

    async def health(self) -> dict[str, dict[str, object]]:
        """One ``/healthcheck`` component per model, its backends probed now (a model of
        several also says how many are up; their addresses stay out of a public page)."""
        out: dict[str, dict[str, object]] = {}
        for model_id, pool in self.pools.items():
            statuses = await asyncio.gather(*(self.probe(model_id, m) for m in pool.members))
            ok = [s for s in statuses if s.ok]
            component: dict[str, object] = {
                "ok": bool(ok), "modelId": model_id,
                "error": None if ok else statuses[0].error}
            if len(statuses) > 1:
                component.update(backends=len(statuses), backendsUp=len(ok))
            out[f"backend:{pool.model_name}"] = component
        return out

    async def close(self) -> None:
        """Stop the recovery probes (the router is stopping)."""
        self._closed = True
        tasks = list(self._recovering.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
