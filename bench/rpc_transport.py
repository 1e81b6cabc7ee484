"""MOR-RPC transport cost on loopback: provider and consumer in separate processes.

    .venv/bin/python bench/rpc_transport.py [--streams 64] [--chunks 500] [--tokens-per-s 0]

Measures the transport alone (no OpenAI front end, no backend): signed request,
encrypted chunks with flow control, signed trailer. Prints router CPU per chunk
for each side and both together (the budget is 50 µs for both routers including
their HTTP legs), chunk throughput, and p50/p99 latency of a ping and of a
stream's first chunk at concurrency 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from proxy_router.morrpc import RequestContext, RpcClient, RpcServer, SessionKey, Signer
from proxy_router.ports import free_port, port_open
from proxy_router.process import spawn

PROVIDER_KEY = "0x" + "11" * 32
CONSUMER_KEY = "0x" + "22" * 32
CHUNK = b'{"choices":[{"delta":{"content":" token"},"index":0}]}'.ljust(100, b" ")


async def serve(port: int) -> None:
    server = RpcServer(Signer.from_key(PROVIDER_KEY))

    @server.method("bench.stream")
    async def stream(params: dict[str, Any], ctx: RequestContext) -> AsyncIterator[bytes]:
        ctx.use_peer_key(params["key"])
        delay = 1 / params["tps"] if params["tps"] else 0
        for _ in range(params["n"]):
            if delay:
                await asyncio.sleep(delay)
            yield CHUNK

    await server.start("127.0.0.1", port)
    print("READY", flush=True)
    await asyncio.Event().wait()


def cpu_of(pid: int) -> float:
    """User+system CPU seconds of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def run(args: argparse.Namespace) -> None:
    port = free_port()
    proc = await asyncio.to_thread(
        spawn, [sys.executable, __file__, "--serve", str(port),
                *(["--uvloop"] if args.uvloop else [])],
        name="MOR-RPC bench server", ready=lambda: port_open(port), timeout=20, interval=0.05)
    provider = Signer.from_key(PROVIDER_KEY)
    key = SessionKey.generate()
    try:
        async with RpcClient(f"127.0.0.1:{port}", Signer.from_key(CONSUMER_KEY),
                             provider.address) as client:
            cipher = await client.cipher_for(key)
            params = {"key": key.public_key_hex, "tps": args.tokens_per_s}

            pings, firsts = [], []
            for _ in range(args.latency_samples):
                start = time.perf_counter()
                await client.ping()
                pings.append(time.perf_counter() - start)
                start = time.perf_counter()
                async for _chunk in client.stream("bench.stream", {**params, "n": 1, "tps": 0},
                                                  cipher=cipher):
                    firsts.append(time.perf_counter() - start)

            async def one() -> int:
                count = 0
                async for _chunk in client.stream("bench.stream", {**params, "n": args.chunks},
                                                  cipher=cipher):
                    count += 1
                return count

            server_cpu, client_cpu, wall = cpu_of(proc.pid), own_cpu(), time.perf_counter()
            total = sum(await asyncio.gather(*(one() for _ in range(args.streams))))
            wall = time.perf_counter() - wall
            server_cpu = cpu_of(proc.pid) - server_cpu
            client_cpu = own_cpu() - client_cpu
    finally:
        proc.kill()

    ms = 1e3
    print(f"latency at concurrency 1 ({args.latency_samples} samples), loopback:")
    print(f"  ping round trip        p50 {statistics.median(pings) * ms:.3f} ms   "
          f"p99 {pct(pings, 0.99) * ms:.3f} ms")
    print(f"  stream first chunk     p50 {statistics.median(firsts) * ms:.3f} ms   "
          f"p99 {pct(firsts, 0.99) * ms:.3f} ms")
    print(f"{args.streams} streams x {args.chunks} chunks of {len(CHUNK)} B, "
          f"pacing {args.tokens_per_s or 'none'} tokens/s/stream:")
    print(f"  {total} chunks in {wall:.2f} s = {total / wall:,.0f} chunks/s")
    print(f"  CPU per chunk: provider {server_cpu / total * 1e6:.1f} µs, "
          f"consumer {client_cpu / total * 1e6:.1f} µs, "
          f"both {(server_cpu + client_cpu) / total * 1e6:.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--chunks", type=int, default=500)
    parser.add_argument("--tokens-per-s", type=int, default=0)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--uvloop", action="store_true",
                        help="run both processes on uvloop (if installed)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    if args.serve:
        asyncio.run(serve(args.serve))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
