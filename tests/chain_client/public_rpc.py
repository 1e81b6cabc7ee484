"""A JSON-RPC proxy in front of anvil that behaves like a public RPC provider.

Public endpoints refuse wide ``eth_getLogs`` ranges and answer 429 when called too
often; anvil does neither. This proxy adds both, on loopback, so the chain client
and the market index can be tested against them with a real chain behind.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from proxy_router.ports import free_port


@dataclass
class PublicRpcProxy:
    upstream: str
    max_log_range: int | None = None
    """Refuse ``eth_getLogs`` spanning more blocks, as Alchemy/Infura/BASE do."""
    range_error: str = "eth_getLogs is limited to a {limit} block range"
    fail_next: int = 0
    """Answer this many next requests with HTTP 429 (then recover)."""
    rpc_rate_limited_next: int = 0
    """Answer this many next requests with a JSON-RPC rate-limit error (HTTP 200)."""
    no_state_before: int | None = None
    """Refuse ``eth_getCode`` at older blocks, as a node without history (or anvil
    restarted from a state file) does."""
    calls: Counter[str] = field(default_factory=Counter)
    log_spans: list[int] = field(default_factory=list)
    log_queries: list[tuple[int, int]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    port: int = 0
    _runner: web.AppRunner | None = None
    _http: aiohttp.ClientSession | None = None

    @property
    def first_log_query(self) -> tuple[int, int] | None:
        return self.log_queries[0] if self.log_queries else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> PublicRpcProxy:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._http = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        message: Any = json.loads(body)
        method = message.get("method", "?") if isinstance(message, dict) else "batch"
        self.calls[method] += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            self.refused["429"] += 1
            return web.json_response({"error": "too many requests"}, status=429,
                                     headers={"Retry-After": "0"})
        if self.rpc_rate_limited_next > 0:
            self.rpc_rate_limited_next -= 1
            self.refused["rpc-limit"] += 1
            return self._error(message, -32005, "rate limit exceeded, retry later")
        if method == "eth_getCode" and self.no_state_before is not None:
            block = message["params"][1]
            if isinstance(block, str) and block.startswith("0x") \
                    and int(block, 16) < self.no_state_before:
                self.refused["history"] += 1
                return self._error(message, -32602, "BlockOutOfRangeError: no state at block")
        if method == "eth_getLogs":
            query = message["params"][0]
            start, end = _block(query.get("fromBlock")), _block(query.get("toBlock"))
            self.log_queries.append((start, end))
            span = end - start + 1
            self.log_spans.append(span)
            if self.max_log_range is not None and span > self.max_log_range:
                self.refused["range"] += 1
                return self._error(message, -32600,
                                   self.range_error.format(limit=self.max_log_range))
        assert self._http is not None
        async with self._http.post(self.upstream, data=body,
                                   headers={"Content-Type": "application/json"}) as resp:
            return web.Response(body=await resp.read(), status=resp.status,
                                content_type="application/json")

    @staticmethod
    def _error(message: Any, code: int, text: str) -> web.Response:
        return web.json_response({"jsonrpc": "2.0", "id": message.get("id"),
                                  "error": {"code": code, "message": text}})


def _block(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.startswith("0x"):
        return int(value, 16)
    raise ValueError(f"this proxy needs numeric block bounds, got {value!r}")
