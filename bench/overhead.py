"""Router overhead: a MOCK OpenAI backend direct vs through consumer → provider, same run.

    .venv/bin/python bench/overhead.py [--json] [--quick]

Starts the MOCK OpenAI streaming server (``proxy_router.dev.mock_openai``, canned
tokens, no model) as its own process and a devnet (anvil, contracts, provider and
consumer proxy-routers) in front of it, then streams chat completions from one
aiohttp client in this process, alternating direct (mock ``/v1/chat/completions``)
and routed (consumer ``/v1/chat/completions``: HTTP → signed, AES-GCM MOR-RPC →
provider → HTTP → mock) so drift on this noisy box hits both sides alike.

Scenarios, each direct vs routed, one fresh mock + devnet per mock setting:
- no-delay mock (the saturated case): concurrency 1 with 200-token replies and with
  1-token replies (the router path alone, without the tokens queued behind the first),
  and 64 streams;
- paced mock (``--token-delay`` 20 ms = 50 tokens/s per stream, like a GPU server):
  concurrency 1 and 64 streams.

Figures (DESIGN.md §6 targets):
- added TTFT = routed p50 − direct p50 (request start → first ``data:`` chunk with
  content); target ≤ 2 ms at concurrency 1 against the no-delay mock;
- chunk throughput = content chunks delivered / wall time of a round; target routed
  ≥ 0.9× direct at 64 streams with the paced mock (the no-delay ratio is reported);
- router CPU per chunk = run time of the consumer and provider processes
  (/proc/<pid>/task/*/schedstat) during routed rounds / content chunks delivered; target ≤ 50 µs
  for both together, judged at 64 streams (at concurrency 1 every chunk pays a full
  idle → wake-up cycle; the mock's own CPU per chunk is shown as the floor). "net"
  subtracts the routers' idle background (chain polling), measured in a quiet window.
The client's and the mock's CPU are reported: when the client is near one full core,
or client + mock fill the machine, the direct baseline is bound by them, i.e. the
true direct rate is higher than shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from harness import MockBackend, cpu_of, say

from proxy_router.dev.devnet import Devnet, DevnetState
from proxy_router.ports import free_port

TTFT_TARGET_MS = 2.0
RATIO_TARGET = 0.9
CPU_TARGET_US = 50.0
CLIENT_BOUND_SHARE = 0.85  # client CPU ≥ this share of one core: the baseline is client-bound
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
_CONTENT = b'"content"'
_DONE = b"data: [DONE]"


def own_cpu() -> float:
    return time.process_time()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the client -------------------------------------------------------------------------------


@dataclass
class Target:
    name: str  # "direct" | "routed"
    url: str
    model: str


@dataclass
class Side:
    """What one side (direct or routed) of a scenario measured, summed over its rounds."""

    ttfts: list[float] = field(default_factory=list)
    chunks: int = 0
    requests: int = 0
    failures: int = 0
    wall: float = 0.0
    client_cpu: float = 0.0
    consumer_cpu: float = 0.0
    provider_cpu: float = 0.0
    mock_cpu: float = 0.0


class StreamFailed(Exception):
    pass


async def stream_once(http: aiohttp.ClientSession, target: Target, body: bytes
                      ) -> tuple[float, int]:
    """One streamed chat completion: (seconds to the first content chunk, content chunks)."""
    start = time.perf_counter()
    ttft = 0.0
    chunks = 0
    done = False
    tail = b""
    async with http.post(target.url, data=body, headers=HEADERS) as resp:
        if resp.status != 200:
            raise StreamFailed(f"{target.name}: HTTP {resp.status}: {(await resp.read())[:200]!r}")
        async for data in resp.content.iter_any():
            if tail:
                data = tail + data
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            n = data.count(_CONTENT, 0, cut)
            if n:
                if not chunks:
                    ttft = time.perf_counter() - start
                chunks += n
            if _DONE in data:
                done = True
    if not done or not chunks:
        raise StreamFailed(f"{target.name}: stream ended without [DONE] after {chunks} chunks")
    return ttft, chunks


class Bench:
    def __init__(self, state: DevnetState, mock: MockBackend, args: argparse.Namespace) -> None:
        self.mock = mock
        self.args = args
        self.consumer_pid = state.pids["consumer"]
        self.provider_pid = state.pids["provider"]
        self.direct = Target("direct", mock.base_url + "/chat/completions", "mock-model")
        self.routed = Target("routed", state.consumer_url + "/chat/completions",
                             state.model_name)
        self.http: aiohttp.ClientSession | None = None
        self.idle_share = 0.0  # routers' CPU share of one core while no request runs

    async def __aenter__(self) -> Bench:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=self.args.request_timeout))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self.http is not None:
            await self.http.close()

    @staticmethod
    def body(target: Target, max_tokens: int | None) -> bytes:
        doc: dict[str, Any] = {"model": target.model, "stream": True,
                               "messages": [{"role": "user", "content": "Say something."}]}
        if max_tokens:
            doc["max_tokens"] = max_tokens
        return json.dumps(doc).encode()

    def _cpu(self) -> tuple[float, float, float, float]:
        return (own_cpu(), cpu_of(self.consumer_pid), cpu_of(self.provider_pid),
                cpu_of(self.mock.pid))

    async def round(self, target: Target, side: Side | None, *, concurrency: int,
                    max_tokens: int | None = None) -> None:
        """``concurrency`` simultaneous streams; figures go to ``side`` (None = warm-up)."""
        assert self.http is not None
        body = self.body(target, max_tokens)
        before = self._cpu()
        wall = time.perf_counter()
        results = await asyncio.gather(
            *(stream_once(self.http, target, body) for _ in range(concurrency)),
            return_exceptions=True)
        wall = time.perf_counter() - wall
        after = self._cpu()
        errors = [r for r in results if isinstance(r, BaseException)]
        if side is None:
            if errors:
                raise StreamFailed(f"warm-up failed: {errors[0]}")
            return
        for r in results:
            if isinstance(r, BaseException):
                side.failures += 1
                if side.failures <= 3:
                    say(f"  ! {type(r).__name__}: {r}")
            else:
                side.ttfts.append(r[0])
                side.chunks += r[1]
        side.requests += concurrency
        side.wall += wall
        d = [a - b for a, b in zip(after, before, strict=True)]
        side.client_cpu += d[0]
        side.consumer_cpu += d[1]
        side.provider_cpu += d[2]
        side.mock_cpu += d[3]

    async def warm_up(self, concurrency: int) -> None:
        """The first routed request opens the paid session (on chain): excluded. Then a
        quiet window measures the routers' idle background CPU."""
        say("  warm-up (opens the session, fills connection pools; not measured)")
        for target in (self.routed, self.direct):
            await self.round(target, None, concurrency=1)
            await self.round(target, None, concurrency=concurrency)
        await asyncio.sleep(0.5)  # let the session bookkeeping settle
        before = cpu_of(self.consumer_pid) + cpu_of(self.provider_pid)
        start = time.perf_counter()
        await asyncio.sleep(self.args.idle_window)
        after = cpu_of(self.consumer_pid) + cpu_of(self.provider_pid)
        self.idle_share = (after - before) / (time.perf_counter() - start)

    async def scenario(self, name: str, *, concurrency: int, rounds: int,
                       max_tokens: int | None = None) -> dict[str, Any]:
        """Alternate direct and routed rounds (A B B A A B ...: each side goes first
        equally often, so neither always inherits the other's leftovers)."""
        sides = {"direct": Side(), "routed": Side()}
        say(f"  {name}: {rounds} round(s) x {concurrency} stream(s) per side, interleaved")
        for i in range(rounds):
            order = (self.direct, self.routed) if i % 2 == 0 else (self.routed, self.direct)
            for target in order:
                await self.round(target, sides[target.name], concurrency=concurrency,
                                 max_tokens=max_tokens)
        tokens = min(self.mock.tokens, max_tokens or self.mock.tokens)
        return summarize(name, concurrency, tokens, self, sides)


def summarize(name: str, concurrency: int, tokens: int, bench: Bench, sides: dict[str, Side]
              ) -> dict[str, Any]:
    mock = bench.mock
    out: dict[str, Any] = {"scenario": name, "concurrency": concurrency,
                           "tokens_per_reply": tokens, "paced": bool(mock.token_delay),
                           "mock_token_delay_s": mock.token_delay}
    for key, s in sides.items():
        ok = len(s.ttfts)
        out[key] = {
            "requests": s.requests, "failures": s.failures, "chunks": s.chunks,
            "wall_s": round(s.wall, 3),
            "ttft_p50_ms": statistics.median(s.ttfts) * 1e3 if ok else None,
            "ttft_p99_ms": pct(s.ttfts, 0.99) * 1e3 if ok else None,
            "chunks_per_s": s.chunks / s.wall if s.wall else 0.0,
            "client_cpu_share": s.client_cpu / s.wall if s.wall else 0.0,
            "mock_cpu_share": s.mock_cpu / s.wall if s.wall else 0.0,
            "mock_cpu_us_per_chunk": s.mock_cpu / s.chunks * 1e6 if s.chunks else None,
            "consumer_cpu_s": round(s.consumer_cpu, 3),
            "provider_cpu_s": round(s.provider_cpu, 3),
        }
    d, r = out["direct"], out["routed"]
    if d["ttft_p50_ms"] is not None and r["ttft_p50_ms"] is not None:
        out["added_ttft_p50_ms"] = r["ttft_p50_ms"] - d["ttft_p50_ms"]
        out["added_ttft_p99_ms"] = r["ttft_p99_ms"] - d["ttft_p99_ms"]
    out["throughput_ratio"] = (r["chunks_per_s"] / d["chunks_per_s"]
                               if d["chunks_per_s"] else None)
    routed = sides["routed"]
    if routed.chunks:
        both = routed.consumer_cpu + routed.provider_cpu
        us = 1e6 / routed.chunks
        out["router_cpu_us_per_chunk"] = {
            "consumer": routed.consumer_cpu * us, "provider": routed.provider_cpu * us,
            "both": both * us,
            "both_net_of_idle": max(0.0, both - bench.idle_share * routed.wall) * us}
        out["router_cpu_ms_per_request"] = both / routed.requests * 1e3
    out["router_idle_cpu_share"] = bench.idle_share
    cpus = os.cpu_count() or 1
    out["direct_client_bound"] = (d["client_cpu_share"] >= CLIENT_BOUND_SHARE
                                  or d["client_cpu_share"] + d["mock_cpu_share"]
                                  >= CLIENT_BOUND_SHARE * cpus)
    return out


# -- orchestration ----------------------------------------------------------------------------


async def run_phase(state: DevnetState, mock: MockBackend, args: argparse.Namespace
                    ) -> list[dict[str, Any]]:
    c = args.concurrency
    results = []
    async with Bench(state, mock, args) as bench:
        await bench.warm_up(c)
        if mock.token_delay:
            label = f"paced {1 / mock.token_delay:.0f} tok/s"
            results.append(await bench.scenario(
                f"{label}, c=1", concurrency=1, rounds=args.paced_requests,
                max_tokens=args.paced_c1_tokens))
            results.append(await bench.scenario(f"{label}, c={c}", concurrency=c,
                                                rounds=args.paced_rounds))
        else:
            results.append(await bench.scenario("no-delay, c=1", concurrency=1,
                                                rounds=args.requests))
            one = await bench.scenario("no-delay, c=1, 1 token", concurrency=1,
                                       rounds=args.requests, max_tokens=1)
            one["ttft_only"] = True  # a 1-token reply has no throughput to speak of
            results.append(one)
            results.append(await bench.scenario(f"no-delay, c={c}", concurrency=c,
                                                rounds=args.rounds))
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One fresh mock + devnet per phase (no-delay, then paced), each stopped after it."""
    root = Path(tempfile.mkdtemp(prefix="overhead-bench-"))
    phases = [] if args.skip_nodelay else [("nodelay", args.nodelay_tokens, 0.0)]
    if not args.skip_paced:
        phases.append(("paced", args.paced_tokens, args.token_delay))
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for name, tokens, delay in phases:
            port = free_port()
            mock = MockBackend(port, root / f"mock-{name}.log", tokens=tokens, token_delay=delay)
            devnet = Devnet(root / f"devnet-{name}", progress=lambda m: say(f"  devnet {m}"))
            try:
                say(f"MOCK OpenAI backend on 127.0.0.1:{port}: {tokens} tokens, "
                    + (f"one per {delay * 1e3:g} ms" if delay else "no delay"))
                mock.start()
                state = devnet.up(backend_url=mock.base_url,
                                  concurrent_slots=2 * args.concurrency)
                results += asyncio.run(run_phase(state, mock, args))
            finally:
                say("  stopping the routers, anvil and the mock")
                Devnet.down_pids(devnet.pids)
                mock.stop()
    finally:
        if args.keep:
            say(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return {"results": results, "seconds": round(time.monotonic() - started, 1),
            "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "targets": {"added_ttft_p50_ms": TTFT_TARGET_MS, "paced_ratio": RATIO_TARGET,
                        "router_cpu_us_per_chunk": CPU_TARGET_US},
            "args": {k: v for k, v in vars(args).items() if k != "json"}}


# -- report -----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def render(report: dict[str, Any]) -> str:
    rows = report["results"]
    w = max([len(r["scenario"]) for r in rows] + [8])
    out = [f"proxy-router overhead vs a MOCK OpenAI backend ({report['cpus']} CPUs, "
           f"Python {report['python']}, {report['seconds']} s)", ""]
    out.append(f"{'scenario':<{w}}  {'tokens':>6}  {'TTFT p50 ms':>17}  {'TTFT p99 ms':>17}  "
               f"{'added ms':>13}")
    out.append(f"{'':<{w}}  {'':>6}  {'direct / routed':>17}  {'direct / routed':>17}  "
               f"{'p50 / p99':>13}")
    for r in rows:
        d, x = r["direct"], r["routed"]
        out.append(
            f"{r['scenario']:<{w}}  {r['tokens_per_reply']:>6}  "
            f"{fmt(d['ttft_p50_ms']):>7} / {fmt(x['ttft_p50_ms']):<7}  "
            f"{fmt(d['ttft_p99_ms']):>7} / {fmt(x['ttft_p99_ms']):<7}  "
            f"{fmt(r.get('added_ttft_p50_ms')):>5} / {fmt(r.get('added_ttft_p99_ms')):<5}")
    out.append("")
    out.append(f"{'scenario':<{w}}  {'chunks/s':>19}  {'ratio':>5}  {'client CPU':>13}  "
               f"{'mock CPU':>8}")
    out.append(f"{'':<{w}}  {'direct / routed':>19}  {'':>5}  {'direct/routed':>13}  "
               f"{'direct':>8}")
    for r in (r for r in rows if not r.get("ttft_only")):
        d, x = r["direct"], r["routed"]
        bound = "*" if r["direct_client_bound"] else " "
        out.append(
            f"{r['scenario']:<{w}}  {d['chunks_per_s']:>8,.0f}{bound}/ {x['chunks_per_s']:<8,.0f}  "
            f"{fmt(r['throughput_ratio']):>5}  "
            f"{d['client_cpu_share']:>5.0%} / {x['client_cpu_share']:<5.0%}  "
            f"{d['mock_cpu_share']:>8.0%}")
    out.append("")
    out.append(f"{'scenario':<{w}}  {'router CPU µs per chunk':>33}  {'ms/req':>6}  "
               f"{'mock µs/chunk':>13}")
    out.append(f"{'':<{w}}  {'consumer provider   both    net':>33}  {'both':>6}  "
               f"{'(floor)':>13}")
    for r in (r for r in rows if not r.get("ttft_only")):
        cpu = r.get("router_cpu_us_per_chunk") or {}
        out.append(
            f"{r['scenario']:<{w}}  {fmt(cpu.get('consumer'), '.1f'):>8} "
            f"{fmt(cpu.get('provider'), '.1f'):>8} {fmt(cpu.get('both'), '.1f'):>6} "
            f"{fmt(cpu.get('both_net_of_idle'), '.1f'):>6}  "
            f"{fmt(r.get('router_cpu_ms_per_request')):>6}  "
            f"{fmt(r['direct']['mock_cpu_us_per_chunk'], '.1f'):>13}")
    failures = sum(r[k]["failures"] for r in rows for k in ("direct", "routed"))
    idle = max((r["router_idle_cpu_share"] for r in rows), default=0.0)
    out += [
        f"  * direct baseline bound by the bench client (≥ {CLIENT_BOUND_SHARE:.0%} of a core) "
        "or by client + mock filling the CPUs:",
        "    the true direct rate is higher, so the ratio flatters the routers",
        f"  net = minus the routers' idle background CPU (chain polling, ≤ {idle:.1%} of a "
        "core); floor = the mock's own CPU per chunk it writes (direct rounds)",
        f"  failed streams: {failures}", "", "targets (DESIGN.md §6):"]
    for r in rows:
        if r["concurrency"] == 1 and not r["paced"] and r.get("added_ttft_p50_ms") is not None:
            added = r["added_ttft_p50_ms"]
            out.append(f"  added TTFT p50 ≤ {TTFT_TARGET_MS:g} ms, {r['scenario']} "
                       f"({r['tokens_per_reply']}-token replies): {added:.2f} ms  "
                       f"{verdict(added <= TTFT_TARGET_MS)}")
    for r in rows:
        ratio = r["throughput_ratio"]
        if r["concurrency"] > 1 and ratio is not None:
            if r["paced"]:
                out.append(f"  throughput ratio ≥ {RATIO_TARGET:g}, {r['scenario']}: "
                           f"{ratio:.3f}  {verdict(ratio >= RATIO_TARGET)}")
            else:
                bound = " (direct baseline bound by the bench)" if r["direct_client_bound"] \
                    else ""
                out.append(f"  saturated ratio, {r['scenario']} (reported): {ratio:.3f}{bound}")
    for r in rows:
        cpu = r.get("router_cpu_us_per_chunk")
        if cpu and r["concurrency"] > 1:
            out.append(f"  router CPU per chunk, both ≤ {CPU_TARGET_US:g} µs, {r['scenario']}: "
                       f"{cpu['both']:.1f} µs  {verdict(cpu['both'] <= CPU_TARGET_US)}")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=200,
                        help="no-delay c=1: sequential requests per side (for each reply length)")
    parser.add_argument("--paced-requests", type=int, default=150,
                        help="paced c=1: sequential requests per side")
    parser.add_argument("--paced-c1-tokens", type=int, default=5,
                        help="paced c=1: max_tokens per request (keeps the run short; "
                             "TTFT does not depend on it)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent streams")
    parser.add_argument("--rounds", type=int, default=6,
                        help="no-delay c=N: rounds per side, interleaved direct/routed")
    parser.add_argument("--paced-rounds", type=int, default=8,
                        help="paced c=N: rounds per side, interleaved direct/routed")
    parser.add_argument("--nodelay-tokens", type=int, default=200,
                        help="tokens per reply from the no-delay mock")
    parser.add_argument("--paced-tokens", type=int, default=50,
                        help="tokens per reply from the paced mock")
    parser.add_argument("--token-delay", type=float, default=0.02,
                        help="paced mock: seconds per token")
    parser.add_argument("--idle-window", type=float, default=3.0,
                        help="seconds of quiet to measure the routers' idle background CPU")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--skip-nodelay", action="store_true")
    parser.add_argument("--skip-paced", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20 c=1 requests, 1 round of c=N, 1 s idle window")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON on stdout (the table goes to stderr)")
    parser.add_argument("--keep", action="store_true", help="keep the devnet and mock logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = args.paced_requests = 20
        args.rounds = args.paced_rounds = 1
        args.idle_window = 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(_sig: int, _frame: object) -> None:
        raise SystemExit(143)  # unwind through run()'s finally: stop what we started

    signal.signal(signal.SIGTERM, on_term)
    report = run(args)
    table = render(report)
    if args.json:
        say(table)
        print(json.dumps(report, indent=2))
    else:
        print(table)
    failures = sum(r[k]["failures"] for r in report["results"] for k in ("direct", "routed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
