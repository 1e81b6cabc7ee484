"""``/healthcheck`` for both roles: 200 when every component works, else 503
naming the failing ones (the chain RPC, the event index, a model backend)."""

from __future__ import annotations

import time
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from proxy_router import __version__
from proxy_router.chain.index import MarketIndex


class HealthComponent(BaseModel):
    """One component; the index adds checkpoint/head/lagBlocks, a backend its modelId."""

    model_config = ConfigDict(extra="allow")
    ok: bool
    error: str | None = None


class Marketplace(BaseModel):
    flavor: Literal["native", "morpheus"] = Field(
        description="ours, or a Morpheus-Lumerin diamond (MARKETPLACE_FLAVOR)")
    address: str
    chainId: int


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    failing: list[str] = Field(description="names of the components that are not ok")
    version: str
    marketplace: Marketplace
    uptime: int = Field(description="seconds since the router started")
    components: dict[str, HealthComponent]


def health_response(index: MarketIndex, started: float,
                    extra: dict[str, dict[str, Any]] | None = None) -> web.Response:
    components: dict[str, dict[str, Any]] = {
        "chain": {"ok": index.last_error is None, "error": index.last_error},
        "index": {"ok": index.last_error is None, "checkpoint": index.checkpoint,
                  "head": index.head, "lagBlocks": index.lag_blocks},
        **(extra or {}),
    }
    failing = sorted(name for name, c in components.items() if not c.get("ok"))
    market = Marketplace(flavor=index.market.flavor, address=index.market.address,
                         chainId=index.client.chain_id)
    body = Health(status="ok" if not failing else "degraded", failing=failing,
                  version=__version__, marketplace=market, uptime=round(time.time() - started),
                  components={k: HealthComponent.model_validate(v)
                              for k, v in components.items()})
    return web.json_response(body.model_dump(mode="json", exclude_unset=True),
                             status=200 if not failing else 503)
