"""Test handlers for an RpcServer, and a script that serves them in a separate process.

Run as ``python serve.py --port N --key HEX``: prints ``READY <port>`` once listening,
so a test can SIGKILL a real provider process mid-stream.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from proxy_router.morrpc import ErrorCode, RequestContext, RpcError, RpcServer, Signer


@dataclass
class HandlerState:
    """What the handlers observed, keyed by the ``tag`` param tests pass."""

    produced: Counter[str] = field(default_factory=Counter)
    cancelled: set[str] = field(default_factory=set)
    raw_params: list[dict[str, Any]] = field(default_factory=list)


def register_test_methods(server: RpcServer) -> HandlerState:
    state = HandlerState()

    @server.method("test.echo")
    async def echo(params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return {"params": params, "sender": ctx.sender}

    @server.method("test.fail")
    async def fail(params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        raise RpcError(params["code"], "requested failure", {"why": "test"})

    @server.method("test.crash")
    async def crash(params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        raise ValueError("secret internal detail")

    @server.method("test.float")
    async def floaty(params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return {"x": 0.5}

    @server.method("test.sleep")
    async def sleep(params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        tag = params.get("tag", "")
        try:
            await asyncio.sleep(params["ms"] / 1000)
        except asyncio.CancelledError:
            state.cancelled.add(tag)
            raise
        return {"slept": params["ms"]}

    @server.method("test.count")
    async def count(params: dict[str, Any], ctx: RequestContext) -> AsyncIterator[bytes]:
        ctx.use_peer_key(params["key"])
        tag = params.get("tag", "")
        delay = params.get("delay_ms", 0) / 1000
        try:
            for i in range(params["n"]):
                if delay:
                    await asyncio.sleep(delay)
                state.produced[tag] += 1
                yield f"{tag}:{i}".encode()
        except (asyncio.CancelledError, GeneratorExit):
            state.cancelled.add(tag)
            raise
        ctx.trailer["n"] = params["n"]

    @server.method("test.echo_payload")
    async def echo_payload(params: dict[str, Any], ctx: RequestContext) -> AsyncIterator[bytes]:
        state.raw_params.append(params)
        ctx.use_peer_key(params["key"])
        body = ctx.open_payload()
        for i in range(0, len(body), 3):
            yield body[i:i + 3]

    @server.method("test.no_key")
    async def no_key(params: dict[str, Any], ctx: RequestContext) -> AsyncIterator[bytes]:
        yield b"never sent: no key to encrypt to"

    @server.method("test.fail_mid")
    async def fail_mid(params: dict[str, Any], ctx: RequestContext) -> AsyncIterator[bytes]:
        ctx.use_peer_key(params["key"])
        yield b"one"
        yield b"two"
        raise RpcError(ErrorCode.BACKEND_ERROR, "backend returned 500")

    @server.method("test.backend_down")
    async def backend_down(params: dict[str, Any], ctx: RequestContext) -> AsyncIterator[bytes]:
        ctx.use_peer_key(params["key"])
        yield b"partial"
        raise ConnectionRefusedError("backend at 127.0.0.1:1 refused")

    return state


async def _serve(port: int, key: str) -> None:
    server = RpcServer(Signer.from_key(key), heartbeat=None)
    register_test_methods(server)
    bound = await server.start("127.0.0.1", port)
    print(f"READY {bound}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.key))
