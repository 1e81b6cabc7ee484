"""``/healthcheck`` for both roles: 200 when every component works, else 503
naming the failing ones (the chain RPC, the event index, a model backend)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from proxy_router import __version__
from proxy_router.chain.index import MarketIndex


def health_response(index: MarketIndex, started: float,
                    extra: dict[str, dict[str, Any]] | None = None) -> web.Response:
    components: dict[str, dict[str, Any]] = {
        "chain": {"ok": index.last_error is None, "error": index.last_error},
        "index": {"ok": index.last_error is None, "checkpoint": index.checkpoint,
                  "head": index.head, "lagBlocks": index.lag_blocks},
        **(extra or {}),
    }
    failing = sorted(name for name, c in components.items() if not c.get("ok"))
    body = {"status": "ok" if not failing else "degraded", "failing": failing,
            "version": __version__, "uptime": round(time.time() - started),
            "components": components}
    return web.json_response(body, status=200 if not failing else 503)
