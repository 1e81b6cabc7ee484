"""Router overhead: a MOCK OpenAI backend direct vs through consumer → provider, same run.

    .venv/bin/python bench/overhead.py [--json] [--quick]

Starts the MOCK OpenAI streaming server (``proxy_router.testing.mock_openai``, canned
tokens, no model) as its own process and a devnet (anvil, contracts, provider and
consumer proxy-routers) in front of it, then streams chat completions from one
aiohttp client in this process, alternating direct (mock ``/v1/chat/completions``)
and routed (consumer ``/v1/chat/completions``: HTTP → signed, AES-GCM MOR-RPC →
provider → HTTP → mock) so drift on this noisy box hits both sides alike.

Scenarios, each direct vs routed:
- no-delay mock (the saturated case): concurrency 1 (TTFT p50/p99) and 64 streams;
- paced mock (``--token-delay`` 20 ms = 50 tokens/s per stream, like a GPU server):
  concurrency 1 and 64 streams. Each mock setting gets its own fresh devnet.

Figures (DESIGN.md §6 targets):
- added TTFT = routed p50 − direct p50 (request start → first ``data:`` chunk with
  content); target ≤ 2 ms at concurrency 1 (no-delay mock);
- chunk throughput = content chunks delivered / wall time of a round; target routed
  ≥ 0.9× direct at 64 streams with the paced mock (the no-delay ratio is reported);
- router CPU per chunk = utime+stime of the consumer and provider processes
  (/proc/<pid>/stat) during routed rounds / content chunks delivered; target ≤ 50 µs
  for both together. Their idle background (chain polling), measured during the
  direct rounds, is shown separately ("net").
The client's own CPU is reported: when it is near one full core the direct
baseline is client-bound, i.e. the true direct figure is higher than shown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from proxy_router.devnet import Devnet, DevnetState, stop_pid
from proxy_router.testing.ports import free_port

TTFT_TARGET_MS = 2.0
RATIO_TARGET = 0.9
CPU_TARGET_US = 50.0
CLIENT_BOUND_SHARE = 0.85  # client CPU ≥ this share of one core: the baseline is client-bound
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
_CONTENT = b'"content"'
_DONE = b"data: [DONE]"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of one process, from /proc (10 ms ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the MOCK backend process ---------------------------------------------------------------


class MockBackend:
    """``proxy_router.testing.mock_openai`` in its own process (its CPU is not the client's)."""

    def __init__(self, port: int, tokens: int, token_delay: float, log: Path) -> None:
        self.port = port
        self.tokens = tokens
        self.token_delay = token_delay
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> MockBackend:
        cmd = [sys.executable, "-m", "proxy_router.testing.mock_openai", "--host", "127.0.0.1",
               "--port", str(self.port), "--tokens", str(self.tokens),
               "--token-delay", str(self.token_delay)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mock backend exited; see {self.log}")
            if "listening" in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.05)
        raise TimeoutError(f"mock backend not ready; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            stop_pid(proc.pid, timeout=5)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


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

    async def __aenter__(self) -> Bench:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=self.args.request_timeout))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self.http is not None:
            await self.http.close()

    def body(self, target: Target, max_tokens: int | None) -> bytes:
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
        """The first routed request opens the paid session (on chain): excluded."""
        say("  warm-up (opens the session, fills connection pools; not measured)")
        for target in (self.routed, self.direct):
            await self.round(target, None, concurrency=1)
            await self.round(target, None, concurrency=concurrency)

    async def scenario(self, name: str, *, concurrency: int, rounds: int,
                       max_tokens: int | None = None) -> dict[str, Any]:
        """Alternate direct and routed rounds (A B A B ...), starting side flipped each pair."""
        sides = {"direct": Side(), "routed": Side()}
        say(f"  {name}: {rounds} rounds x {concurrency} stream(s) per side, interleaved")
        for i in range(rounds):
            order = (self.direct, self.routed) if i % 2 == 0 else (self.routed, self.direct)
            for target in order:
                await self.round(target, sides[target.name], concurrency=concurrency,
                                 max_tokens=max_tokens)
        return summarize(name, concurrency, self.mock, sides)


def summarize(name: str, concurrency: int, mock: MockBackend, sides: dict[str, Side]
              ) -> dict[str, Any]:
    out: dict[str, Any] = {"scenario": name, "concurrency": concurrency,
                           "mock_tokens": mock.tokens, "mock_token_delay_s": mock.token_delay}
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
            "consumer_cpu_s": round(s.consumer_cpu, 3),
            "provider_cpu_s": round(s.provider_cpu, 3),
        }
    d, r = sides["direct"], sides["routed"]
    dd, rr = out["direct"], out["routed"]
    if dd["ttft_p50_ms"] is not None and rr["ttft_p50_ms"] is not None:
        out["added_ttft_p50_ms"] = rr["ttft_p50_ms"] - dd["ttft_p50_ms"]
        out["added_ttft_p99_ms"] = rr["ttft_p99_ms"] - dd["ttft_p99_ms"]
    out["throughput_ratio"] = (rr["chunks_per_s"] / dd["chunks_per_s"]
                               if dd["chunks_per_s"] else None)
    # Router CPU during routed rounds; the direct rounds give their idle background rate.
    idle_c = d.consumer_cpu / d.wall if d.wall else 0.0
    idle_p = d.provider_cpu / d.wall if d.wall else 0.0
    if r.chunks:
        us = 1e6 / r.chunks
        out["router_cpu_us_per_chunk"] = {
            "consumer": r.consumer_cpu * us, "provider": r.provider_cpu * us,
            "both": (r.consumer_cpu + r.provider_cpu) * us,
            "both_net_of_idle": max(0.0, r.consumer_cpu + r.provider_cpu
                                    - (idle_c + idle_p) * r.wall) * us,
        }
    out["router_idle_cpu_share"] = idle_c + idle_p
    out["direct_client_bound"] = dd["client_cpu_share"] >= CLIENT_BOUND_SHARE
    return out


# -- orchestration ----------------------------------------------------------------------------


async def run_phase(state: DevnetState, mock: MockBackend, args: argparse.Namespace,
                    paced: bool) -> list[dict[str, Any]]:
    label = f"paced {1 / mock.token_delay:.0f} tok/s" if paced else "no-delay"
    results = []
    async with Bench(state, mock, args) as bench:
        await bench.warm_up(args.concurrency)
        if paced:
            results.append(await bench.scenario(
                f"{label}, c=1", concurrency=1, rounds=args.paced_requests,
                max_tokens=args.paced_c1_tokens))
        else:
            results.append(await bench.scenario(f"{label}, c=1", concurrency=1,
                                                rounds=args.requests))
        results.append(await bench.scenario(f"{label}, c={args.concurrency}",
                                            concurrency=args.concurrency, rounds=args.rounds))
    for r in results:
        r["paced"] = paced
        r["tokens_per_request"] = (args.paced_c1_tokens if paced and r["concurrency"] == 1
                                   else mock.tokens)
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One fresh mock + devnet per phase (no-delay, then paced), each stopped after it."""
    root = Path(tempfile.mkdtemp(prefix="overhead-bench-"))
    phases = [(False, args.nodelay_tokens, 0.0)] if not args.skip_nodelay else []
    if not args.skip_paced:
        phases.append((True, args.paced_tokens, args.token_delay))
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for paced, tokens, delay in phases:
            name = "paced" if paced else "nodelay"
            port = free_port()
            mock = MockBackend(port, tokens, delay, root / f"mock-{name}.log")
            devnet = Devnet(root / f"devnet-{name}", progress=lambda m: say(f"  devnet {m}"))
            try:
                say(f"MOCK OpenAI backend on 127.0.0.1:{port}: {tokens} tokens, "
                    + (f"one per {delay * 1e3:g} ms" if delay else "no delay"))
                mock.start()
                state = devnet.up(backend_url=mock.base_url,
                                  concurrent_slots=2 * args.concurrency)
                results += asyncio.run(run_phase(state, mock, args, paced=paced))
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
            "targets": {"added_ttft_p50_ms": TTFT_TARGET_MS, "paced_c64_ratio": RATIO_TARGET,
                        "router_cpu_us_per_chunk": CPU_TARGET_US},
            "args": {k: v for k, v in vars(args).items() if k != "json"}}


# -- report -----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def render(report: dict[str, Any]) -> str:
    rows = report["results"]
    lines = [f"proxy-router overhead vs a MOCK OpenAI backend ({report['cpus']} CPUs, "
             f"Python {report['python']}, {report['seconds']} s)", ""]
    lines.append(f"{'scenario':<22} {'TTFT p50 ms':>15} {'TTFT p99 ms':>15} {'added p50':>9} "
                 f"{'added p99':>9}")
    lines.append(f"{'':<22} {'direct / routed':>15} {'direct / routed':>15}")
    for r in rows:
        d, x = r["direct"], r["routed"]
        lines.append(
            f"{r['scenario']:<22} {fmt(d['ttft_p50_ms']):>7} / {fmt(x['ttft_p50_ms']):<5} "
            f"{fmt(d['ttft_p99_ms']):>7} / {fmt(x['ttft_p99_ms']):<5} "
            f"{fmt(r.get('added_ttft_p50_ms')):>9} {fmt(r.get('added_ttft_p99_ms')):>9}")
    lines.append("")
    lines.append(f"{'scenario':<22} {'chunks/s':>17} {'ratio':>6} {'router CPU µs/chunk':>28} "
                 f"{'client CPU':>13}")
    lines.append(f"{'':<22} {'direct / routed':>17} {'':>6} {'consumer provider both net':>28} "
                 f"{'direct/routed':>13}")
    for r in rows:
        d, x = r["direct"], r["routed"]
        cpu = r.get("router_cpu_us_per_chunk") or {}
        bound = "*" if r["direct_client_bound"] else " "
        lines.append(
            f"{r['scenario']:<22} {d['chunks_per_s']:>7,.0f}{bound}/ {x['chunks_per_s']:<7,.0f} "
            f"{fmt(r['throughput_ratio']):>6} "
            f"{fmt(cpu.get('consumer'), '.1f'):>8} {fmt(cpu.get('provider'), '.1f'):>8} "
            f"{fmt(cpu.get('both'), '.1f'):>5} {fmt(cpu.get('both_net_of_idle'), '.1f'):>5} "
            f"{d['client_cpu_share']:>6.0%}/{x['client_cpu_share']:<6.0%}")
    failures = sum(r[k]["failures"] for r in rows for k in ("direct", "routed"))
    lines.append(f"  * direct baseline client-bound (bench client ≥ {CLIENT_BOUND_SHARE:.0%} "
                 "of a core): the real direct rate is higher and the ratio flatters the "
                 "routers")
    lines.append(f"  net = minus the routers' idle background CPU (chain polling), "
                 f"{fmt(rows[0]['router_idle_cpu_share'] * 100 if rows else None, '.1f')}% "
                 "of a core; failed streams: " + str(failures))
    lines.append("")
    lines.append("targets (DESIGN.md §6):")
    for r in rows:
        if r["concurrency"] == 1 and not r["paced"] and r.get("added_ttft_p50_ms") is not None:
            lines.append(f"  added TTFT p50 at c=1 (no-delay) ≤ {TTFT_TARGET_MS:g} ms: "
                         f"{r['added_ttft_p50_ms']:.2f} ms  "
                         f"{verdict(r['added_ttft_p50_ms'] <= TTFT_TARGET_MS)}")
    for r in rows:
        if r["concurrency"] > 1 and r["paced"] and r["throughput_ratio"] is not None:
            lines.append(f"  throughput ratio at c={r['concurrency']} paced ≥ {RATIO_TARGET:g}: "
                         f"{r['throughput_ratio']:.3f}  "
                         f"{verdict(r['throughput_ratio'] >= RATIO_TARGET)}")
        if r["concurrency"] > 1 and not r["paced"] and r["throughput_ratio"] is not None:
            bound = " (direct client-bound)" if r["direct_client_bound"] else ""
            lines.append(f"  saturated ratio at c={r['concurrency']} no-delay (reported): "
                         f"{r['throughput_ratio']:.3f}{bound}")
    for r in rows:
        cpu = r.get("router_cpu_us_per_chunk")
        if cpu:
            lines.append(f"  router CPU per chunk, both ≤ {CPU_TARGET_US:g} µs, "
                         f"{r['scenario']}: {cpu['both']:.1f} µs  "
                         f"{verdict(cpu['both'] <= CPU_TARGET_US)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=200,
                        help="no-delay c=1: sequential requests per side")
    parser.add_argument("--paced-requests", type=int, default=100,
                        help="paced c=1: sequential requests per side")
    parser.add_argument("--paced-c1-tokens", type=int, default=5,
                        help="paced c=1: max_tokens per request (keeps the run short; "
                             "TTFT does not depend on it)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent streams")
    parser.add_argument("--rounds", type=int, default=4,
                        help="c=N: rounds per side, interleaved direct/routed")
    parser.add_argument("--nodelay-tokens", type=int, default=200,
                        help="tokens per reply from the no-delay mock")
    parser.add_argument("--paced-tokens", type=int, default=50,
                        help="tokens per reply from the paced mock")
    parser.add_argument("--token-delay", type=float, default=0.02,
                        help="paced mock: seconds per token")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--skip-nodelay", action="store_true")
    parser.add_argument("--skip-paced", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20 c=1 requests, 1 round of c=N")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON (the table goes to stderr)")
    parser.add_argument("--keep", action="store_true", help="keep the devnet and mock logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = args.paced_requests = 20
        args.rounds = 1
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
        print(json.dumps(report, indent=2, default=_json_default))
    else:
        print(table)
    failures = sum(r[k]["failures"] for r in report["results"] for k in ("direct", "routed"))
    return 1 if failures else 0


def _json_default(value: object) -> object:
    with contextlib.suppress(TypeError):
        return asdict(value)  # type: ignore[call-overload]
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
