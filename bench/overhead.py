"""Router overhead: a MOCK OpenAI backend direct vs through consumer → provider, same run.

    .venv/bin/python bench/overhead.py [--json] [--quick] [--scenarios GLOB,...]
                                       [--profile DIR]

Starts the MOCK OpenAI streaming server (``proxy_router.dev.mock_openai``, canned
tokens, no model) as its own process and a devnet (anvil, contracts, provider and
consumer proxy-routers) in front of it, then streams chat completions from one
aiohttp client in this process, alternating direct (mock ``/v1/chat/completions``)
and routed (consumer ``/v1/chat/completions``: HTTP → signed, AES-GCM MOR-RPC →
provider → HTTP → mock) in interleaved rounds so drift on this noisy box hits both
sides alike.

Scenarios (``--scenarios`` picks some by name, globs allowed: ``--list`` shows them),
each direct vs routed, one fresh mock + devnet per mock setting:
- no-delay mock (the saturated case): concurrency 1 with 200-token replies and with
  1-token replies (the router path alone, without the tokens queued behind the first),
  and 64 streams;
- paced mock (``--token-delay`` 20 ms = 50 tokens/s per stream, like a GPU server,
  50-token replies): concurrency 1 streamed and not streamed, 64 streams, and 256 and
  1024 streams (``--many``), each with three start patterns:
  ``burst`` (all at once), ``staggered`` (starts spread evenly over one reply's
  duration) and ``steady`` (started staggered, each restarted as it finishes; only a
  window after a warm-up is measured).

Figures:
- added TTFT = routed − direct, p50 and p99 (request start → first ``data:`` chunk with
  content; for the not-streamed rows: → the whole reply);
- chunk throughput = content chunks delivered / wall time of a round (steady: of the
  window); the ratio is routed / direct;
- router CPU per chunk = run time of the consumer and provider processes
  (/proc/<pid>/task/*/schedstat) during routed rounds / content chunks delivered, also
  divided by the mock's own CPU per chunk in the direct rounds of the same scenario (its
  floor: it only sleeps and writes). "net" subtracts the routers' idle background
  (chain polling), measured in a quiet window.
The client's and the mock's CPU are reported: when the client is near one full core,
or client + mock fill the machine, the direct baseline is bound by them, i.e. the
true direct rate is higher than shown (marked ``*``).

Targets: issue 13 (256 paced streams ≥ 0.95× direct with added TTFT p50 ≤ 10 ms; router
CPU per paced chunk ≤ 2× the mock's; c=1 added TTFT p50 ≤ 2 ms; not streamed ≤ 1.5 ms;
1024 streams reported), and the older DESIGN.md §6 ones. The peers' figures quoted in
issue 13 are printed for reference (measured by its reporter, not in this run).

Caps on the bench's side are lifted so they do not distort it: the client's connector
has no limit, the devnet's ``concurrentSlots`` ≥ the streams, the routers' connection
caps, the provider's prompts per session and the queues admit every stream, and
RLIMIT_NOFILE is raised to its hard limit (the children inherit it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from harness import MockBackend, cpu_of, say

from proxy_router.dev.devnet import Devnet, DevnetState
from proxy_router.ports import free_port

# DESIGN.md §6
TTFT_TARGET_MS = 2.0
RATIO_TARGET = 0.9
CPU_TARGET_US = 50.0
# issue 13
MANY_TARGET_STREAMS = 256
MANY_RATIO_TARGET = 0.95
MANY_TTFT_TARGET_MS = 10.0
CPU_VS_MOCK_TARGET = 2.0
C1_TTFT_TARGET_MS = 2.0
WHOLE_TARGET_MS = 1.5

CLIENT_BOUND_SHARE = 0.85  # client CPU ≥ this share of one core: the baseline is client-bound
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
_CONTENT = b'"content"'
_DONE = b"data: [DONE]"
PATTERNS = ("burst", "staggered", "steady")

# Caps of the routers that would otherwise limit the bench rather than the code under test.
ROUTER_ENV = {
    "MAX_CONNECTIONS_PER_IP": "4096", "MAX_CONNECTIONS": "8192",
    "PROMPTS_PER_SESSION": "1024",  # the consumer accepts at most 1024 from a provider
    "PROMPT_QUEUE_DEPTH": "4096", "PROMPT_QUEUE_WAIT_S": "240",
    "FIRST_TOKEN_TIMEOUT_S": "300",  # a slow first token must not look like a dead provider
    "HTTP_KEEPALIVE_TIMEOUT_S": "600",  # pooled client connections survive the other side's round
}

PEERS = [  # issue 13, one interleaved run on the reporter's 2-core box (not this run)
    ("c=64: chunks/s ratio to direct", "0.31", "1.01"),
    ("c=256: chunks/s ratio to direct", "0.08", "0.90"),
    ("c=64: added TTFT p50", "1,253 ms", "28 ms"),
    ("c=256: added TTFT p50", "8,084 ms", "156 ms"),
    ("router CPU per chunk / the mock's", "~30×", "2.6×"),
]


def own_cpu() -> float:
    return time.process_time()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def raise_nofile() -> tuple[int, int]:
    """RLIMIT_NOFILE soft → hard (1024 streams hold ~3 sockets each in some process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# -- scenarios --------------------------------------------------------------------------------


@dataclass
class Spec:
    key: str  # what --scenarios matches: "paced-256-steady"
    label: str  # what the tables show: "paced 50 tok/s, c=256, steady"
    concurrency: int
    rounds: int
    pattern: str = "burst"
    max_tokens: int | None = None
    stream: bool = True
    ttft_only: bool = False  # no throughput figures (1-token, not streamed)


def phase_specs(args: argparse.Namespace) -> dict[str, list[Spec]]:
    c = args.concurrency
    nodelay = [
        Spec("nodelay-c1", "no-delay, c=1", 1, args.requests),
        Spec("nodelay-c1-1tok", "no-delay, c=1, 1 token", 1, args.requests, max_tokens=1,
             ttft_only=True),
        Spec(f"nodelay-c{c}", f"no-delay, c={c}", c, args.rounds),
    ]
    label = f"paced {1 / args.token_delay:.0f} tok/s" if args.token_delay else "paced"
    paced = [
        Spec("paced-c1", f"{label}, c=1", 1, args.paced_requests,
             max_tokens=args.paced_c1_tokens),
        Spec("paced-c1-whole", f"{label}, c=1, not streamed", 1, args.paced_requests,
             max_tokens=1, stream=False, ttft_only=True),
        Spec(f"paced-c{c}", f"{label}, c={c}", c, args.paced_rounds),
    ]
    for n in args.many:
        for pattern in PATTERNS:
            rounds = args.steady_rounds if pattern == "steady" else args.many_rounds
            paced.append(Spec(f"paced-{n}-{pattern}", f"{label}, c={n}, {pattern}", n, rounds,
                              pattern=pattern))
    return {"nodelay": nodelay, "paced": paced}


def selected(spec: Spec, args: argparse.Namespace) -> bool:
    if not args.scenarios:
        return True
    return any(fnmatch.fnmatchcase(spec.key, glob) for glob in args.scenarios)


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
    errors: Counter[str] = field(default_factory=Counter)

    def fail(self, exc: BaseException) -> None:
        self.failures += 1
        text = f"{type(exc).__name__}: {exc}"[:200]
        if self.failures <= 3 and text not in self.errors:
            say(f"  ! {text}")
        self.errors[text] += 1


class StreamFailed(Exception):
    pass


class Meter:
    """Content chunks received so far by every stream (steady state counts a window)."""

    def __init__(self) -> None:
        self.chunks = 0


async def stream_once(http: aiohttp.ClientSession, target: Target, body: bytes,
                      meter: Meter | None = None) -> tuple[float, int]:
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
                if meter is not None:
                    meter.chunks += n
            if _DONE in data:
                done = True
    if not done or not chunks:
        raise StreamFailed(f"{target.name}: stream ended without [DONE] after {chunks} chunks")
    return ttft, chunks


async def whole_once(http: aiohttp.ClientSession, target: Target, body: bytes
                     ) -> tuple[float, int]:
    """One chat completion not streamed: (seconds to the whole reply, 1)."""
    start = time.perf_counter()
    async with http.post(target.url, data=body,
                         headers={"Content-Type": "application/json"}) as resp:
        raw = await resp.read()
        took = time.perf_counter() - start
        if resp.status != 200:
            raise StreamFailed(f"{target.name}: HTTP {resp.status}: {raw[:200]!r}")
    if b'"choices"' not in raw:
        raise StreamFailed(f"{target.name}: no choices in {raw[:200]!r}")
    return took, 1


class Profiler:
    """``py-spy record --format speedscope`` of the routers during one routed round."""

    def __init__(self, folder: Path, pids: dict[str, int], tag: str) -> None:
        self.folder = folder
        self.pids = pids
        self.tag = tag
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.outputs: dict[str, Path] = {}

    @staticmethod
    def executable() -> str | None:
        beside = Path(sys.executable).with_name("py-spy")
        return shutil.which("py-spy") or (str(beside) if beside.exists() else None)

    def start(self) -> None:
        exe = self.executable()
        assert exe is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            out = self.folder / f"{self.tag}-{name}.speedscope.json"
            log = (self.folder / f"{self.tag}-{name}.py-spy.log").open("wb")
            self.procs[name] = subprocess.Popen(
                [exe, "record", "--format", "speedscope", "--rate", "250", "--gil",
                 "--pid", str(pid),
                 "--output", str(out)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            self.outputs[name] = out
        time.sleep(0.5)  # let py-spy attach before the round starts

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def speedscope_top(path: Path, n: int = 15) -> list[tuple[str, float, float]]:
    """(function, self share, total share) of a py-spy speedscope file, most self first;
    a function's lines are summed (py-spy names a frame per line)."""
    doc = json.loads(path.read_text())
    names = []
    for frame in doc["shared"]["frames"]:
        where = Path(frame.get("file") or "?")
        names.append(f"{frame['name']} ({'/'.join(where.parts[-2:])})")
    self_w: Counter[str] = Counter()
    total_w: Counter[str] = Counter()
    weight_sum = 0.0
    for profile in doc["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            weight_sum += weight
            if stack:
                self_w[names[stack[-1]]] += weight
            for func in {names[i] for i in stack}:
                total_w[func] += weight
    if not weight_sum:
        return []
    return [(func, w / weight_sum, total_w[func] / weight_sum)
            for func, w in self_w.most_common(n)]


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
        self.profiles: dict[str, dict[str, Any]] = {}

    async def __aenter__(self) -> Bench:
        # No connection cap (limit=0) and pooled connections kept across the other side's
        # rounds, so neither side pays TCP set-ups the other does not.
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=600),
            timeout=aiohttp.ClientTimeout(total=self.args.request_timeout))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self.http is not None:
            await self.http.close()

    @staticmethod
    def body(target: Target, max_tokens: int | None, stream: bool = True) -> bytes:
        doc: dict[str, Any] = {"model": target.model, "stream": stream,
                               "messages": [{"role": "user", "content": "Say something."}]}
        if max_tokens:
            doc["max_tokens"] = max_tokens
        return json.dumps(doc).encode()

    def _cpu(self) -> tuple[float, float, float, float]:
        return (own_cpu(), cpu_of(self.consumer_pid), cpu_of(self.provider_pid),
                cpu_of(self.mock.pid))

    @property
    def reply_s(self) -> float:
        """How long the paced mock takes for one whole reply."""
        return self.mock.tokens * self.mock.token_delay

    def _account(self, side: Side, before: tuple[float, ...], after: tuple[float, ...],
                 wall: float) -> None:
        side.wall += wall
        d = [a - b for a, b in zip(after, before, strict=True)]
        side.client_cpu += d[0]
        side.consumer_cpu += d[1]
        side.provider_cpu += d[2]
        side.mock_cpu += d[3]

    async def round(self, target: Target, side: Side | None, spec: Spec) -> None:
        """One round of ``spec`` on ``target``; figures go to ``side`` (None = warm-up)."""
        if spec.pattern == "steady":
            await self._steady(target, side, spec)
            return
        assert self.http is not None
        http = self.http
        body = self.body(target, spec.max_tokens, spec.stream)
        once = stream_once if spec.stream else whole_once
        n = spec.concurrency
        spread = self.reply_s if spec.pattern == "staggered" else 0.0

        async def one(i: int) -> tuple[float, int]:
            if spread:
                await asyncio.sleep(i * spread / n)
            return await once(http, target, body)

        before = self._cpu()
        wall = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        wall = time.perf_counter() - wall
        after = self._cpu()
        errors = [r for r in results if isinstance(r, BaseException)]
        if side is None:
            if errors:
                raise StreamFailed(f"warm-up failed ({len(errors)} of {n}): {errors[0]}")
            return
        for r in results:
            if isinstance(r, BaseException):
                side.fail(r)
            else:
                side.ttfts.append(r[0])
                side.chunks += r[1]
        side.requests += n
        self._account(side, before, after, wall)

    async def _steady(self, target: Target, side: Side | None, spec: Spec) -> None:
        """``concurrency`` streams started over one reply's duration, each restarted as it
        ends; after the ramp and ``--steady-warmup`` s, a window of ``--steady-window`` s is
        measured (chunks received in it, TTFT of the streams started in it, CPU)."""
        assert self.http is not None
        http = self.http
        body = self.body(target, spec.max_tokens)
        meter = Meter()
        n = spec.concurrency
        window = [float("inf"), float("inf")]
        stopping = False
        started_in_window: list[float] = []
        failures: list[BaseException] = []

        async def worker(i: int) -> None:
            await asyncio.sleep(i * self.reply_s / n)
            while not stopping:
                t0 = time.perf_counter()
                try:
                    ttft, _ = await stream_once(http, target, body, meter)
                except Exception as exc:
                    failures.append(exc)
                    await asyncio.sleep(0.05)  # a failing target must not spin the loop
                    continue
                if window[0] <= t0 < window[1]:
                    started_in_window.append(ttft)

        tasks = [asyncio.create_task(worker(i)) for i in range(n)]
        try:
            await asyncio.sleep(self.reply_s + self.args.steady_warmup)
            before, chunks_before = self._cpu(), meter.chunks
            window[0] = time.perf_counter()
            await asyncio.sleep(self.args.steady_window)
            window[1] = time.perf_counter()
            after, chunks_after = self._cpu(), meter.chunks
            stopping = True
            await asyncio.gather(*tasks)  # drain: streams under way end (not measured)
        finally:
            stopping = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if side is None:
            if failures:
                raise StreamFailed(f"warm-up failed ({len(failures)}): {failures[0]}")
            return
        for exc in failures:
            side.fail(exc)
        side.ttfts += started_in_window
        side.chunks += chunks_after - chunks_before
        side.requests += len(started_in_window)
        self._account(side, before, after, window[1] - window[0])

    async def warm_up(self, concurrency: int) -> None:
        """The first routed request opens the paid session (on chain): excluded; then one
        round at ``concurrency`` fills the connection pools. Then a quiet window measures
        the routers' idle background CPU."""
        say(f"  warm-up (opens the session, fills connection pools to {concurrency}; "
            "not measured)")
        for target in (self.routed, self.direct):
            await self.round(target, None, Spec("warm-up", "warm-up", 1, 1))
            await self.round(target, None, Spec("warm-up", "warm-up", concurrency, 1))
        await asyncio.sleep(0.5)  # let the session bookkeeping settle
        before = cpu_of(self.consumer_pid) + cpu_of(self.provider_pid)
        start = time.perf_counter()
        await asyncio.sleep(self.args.idle_window)
        after = cpu_of(self.consumer_pid) + cpu_of(self.provider_pid)
        self.idle_share = (after - before) / (time.perf_counter() - start)

    async def scenario(self, spec: Spec) -> dict[str, Any]:
        """Alternate direct and routed rounds (A B B A A B ...: each side goes first
        equally often, so neither always inherits the other's leftovers)."""
        sides = {"direct": Side(), "routed": Side()}
        what = "request(s)" if spec.concurrency == 1 else "stream(s)"
        say(f"  {spec.label}: {spec.rounds} round(s) x {spec.concurrency} {what} per side, "
            "interleaved")
        started = time.monotonic()
        for i in range(spec.rounds):
            order = (self.direct, self.routed) if i % 2 == 0 else (self.routed, self.direct)
            for target in order:
                await self.round(target, sides[target.name], spec)
        tokens = min(self.mock.tokens, spec.max_tokens or self.mock.tokens)
        out = summarize(spec, tokens, self, sides)
        out["seconds"] = round(time.monotonic() - started, 1)
        return out

    async def profile(self, spec: Spec, folder: Path) -> None:
        """One more routed round of ``spec`` (not measured) under py-spy."""
        tag = spec.key
        say(f"  py-spy: one routed round of {spec.label} (not measured) -> {folder}")
        profiler = Profiler(folder, {"consumer": self.consumer_pid,
                                     "provider": self.provider_pid}, tag)
        try:
            await asyncio.to_thread(profiler.start)
            await self.round(self.routed, Side(), spec)
        finally:
            await asyncio.to_thread(profiler.stop)
        for name, path in profiler.outputs.items():
            entry: dict[str, Any] = {"file": str(path)}
            try:
                entry["top_self"] = speedscope_top(path)
            except (OSError, ValueError, KeyError) as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
            self.profiles[f"{tag} {name}"] = entry


def summarize(spec: Spec, tokens: int, bench: Bench, sides: dict[str, Side]) -> dict[str, Any]:
    mock = bench.mock
    cpus = os.cpu_count() or 1
    out: dict[str, Any] = {"scenario": spec.label, "key": spec.key,
                           "concurrency": spec.concurrency, "pattern": spec.pattern,
                           "stream": spec.stream, "ttft_only": spec.ttft_only,
                           "tokens_per_reply": tokens, "paced": bool(mock.token_delay),
                           "mock_token_delay_s": mock.token_delay}
    for key, s in sides.items():
        ok = len(s.ttfts)
        out[key] = {
            "requests": s.requests, "failures": s.failures, "chunks": s.chunks,
            "errors": dict(s.errors.most_common(5)),
            "wall_s": round(s.wall, 3),
            "ttft_p50_ms": statistics.median(s.ttfts) * 1e3 if ok else None,
            "ttft_p99_ms": pct(s.ttfts, 0.99) * 1e3 if ok else None,
            "chunks_per_s": s.chunks / s.wall if s.wall else 0.0,
            "client_cpu_share": s.client_cpu / s.wall if s.wall else 0.0,
            "mock_cpu_share": s.mock_cpu / s.wall if s.wall else 0.0,
            "routers_cpu_share": (s.consumer_cpu + s.provider_cpu) / s.wall if s.wall else 0.0,
            "machine_cpu_share": ((s.client_cpu + s.consumer_cpu + s.provider_cpu + s.mock_cpu)
                                  / s.wall / cpus if s.wall else 0.0),
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
        out["router_cpu_ms_per_request"] = both / max(routed.requests, 1) * 1e3
        floor = d["mock_cpu_us_per_chunk"]
        out["router_cpu_vs_mock"] = both * us / floor if floor else None
    out["router_idle_cpu_share"] = bench.idle_share
    out["direct_client_bound"] = (d["client_cpu_share"] >= CLIENT_BOUND_SHARE
                                  or d["client_cpu_share"] + d["mock_cpu_share"]
                                  >= CLIENT_BOUND_SHARE * cpus)
    out["routed_client_bound"] = r["client_cpu_share"] >= CLIENT_BOUND_SHARE
    out["routed_machine_bound"] = r["machine_cpu_share"] >= CLIENT_BOUND_SHARE
    return out


# -- orchestration ----------------------------------------------------------------------------


async def run_phase(state: DevnetState, mock: MockBackend, specs: list[Spec],
                    args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    results = []
    async with Bench(state, mock, args) as bench:
        await bench.warm_up(max(s.concurrency for s in specs))
        for spec in specs:
            results.append(await bench.scenario(spec))
        if args.profile is not None and mock.token_delay:
            many = [s for s in specs if s.concurrency == MANY_TARGET_STREAMS]
            wanted = args.profile_scenario.replace("N", str(MANY_TARGET_STREAMS))
            chosen = [s for s in specs if s.key == wanted] or many
            if chosen:
                await bench.profile(chosen[0], args.profile)
            else:
                say(f"  py-spy: neither {wanted} nor a {MANY_TARGET_STREAMS}-stream scenario "
                    "selected, no profile")
    return results, bench.profiles


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One fresh mock + devnet per phase (no-delay, then paced), each stopped after it."""
    nofile = raise_nofile()
    root = Path(tempfile.mkdtemp(prefix="overhead-bench-"))
    specs = phase_specs(args)
    phases = []
    if not args.skip_nodelay:
        phases.append(("nodelay", args.nodelay_tokens, 0.0))
    if not args.skip_paced:
        phases.append(("paced", args.paced_tokens, args.token_delay))
    results: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    started = time.monotonic()
    try:
        for name, tokens, delay in phases:
            chosen = [s for s in specs[name] if selected(s, args)]
            if not chosen:
                continue
            port = free_port()
            mock = MockBackend(port, root / f"mock-{name}.log", tokens=tokens, token_delay=delay)
            devnet = Devnet(root / f"devnet-{name}", progress=lambda m: say(f"  devnet {m}"))
            try:
                say(f"MOCK OpenAI backend on 127.0.0.1:{port}: {tokens} tokens, "
                    + (f"one per {delay * 1e3:g} ms" if delay else "no delay"))
                mock.start()
                slots = max(2 * args.concurrency, *(s.concurrency for s in chosen))
                state = devnet.up(backend_url=mock.base_url, concurrent_slots=slots,
                                  extra_router_env=dict(ROUTER_ENV))
                got, prof = asyncio.run(run_phase(state, mock, chosen, args))
                results += got
                profiles.update(prof)
            finally:
                say("  stopping the routers, anvil and the mock")
                Devnet.down_pids(devnet.pids)
                mock.stop()
    finally:
        if args.keep:
            say(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return {"results": results, "profiles": profiles,
            "seconds": round(time.monotonic() - started, 1),
            "cpus": os.cpu_count(), "python": sys.version.split()[0], "nofile": nofile[0],
            "router_env": ROUTER_ENV,
            "targets": {"added_ttft_p50_ms": TTFT_TARGET_MS, "paced_ratio": RATIO_TARGET,
                        "router_cpu_us_per_chunk": CPU_TARGET_US,
                        "many_streams": MANY_TARGET_STREAMS,
                        "many_ratio": MANY_RATIO_TARGET,
                        "many_added_ttft_p50_ms": MANY_TTFT_TARGET_MS,
                        "router_cpu_vs_mock": CPU_VS_MOCK_TARGET,
                        "c1_added_ttft_p50_ms": C1_TTFT_TARGET_MS,
                        "whole_added_p50_ms": WHOLE_TARGET_MS},
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k != "json"}}


# -- report -----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _tables(rows: list[dict[str, Any]]) -> list[str]:
    w = max([len(r["scenario"]) for r in rows] + [8])
    out = [f"{'scenario':<{w}}  {'tokens':>6}  {'TTFT p50 ms':>19}  {'TTFT p99 ms':>19}  "
           f"{'added ms':>17}",
           f"{'':<{w}}  {'':>6}  {'direct / routed':>19}  {'direct / routed':>19}  "
           f"{'p50 / p99':>17}"]
    for r in rows:
        d, x = r["direct"], r["routed"]
        out.append(
            f"{r['scenario']:<{w}}  {r['tokens_per_reply']:>6}  "
            f"{fmt(d['ttft_p50_ms']):>8} / {fmt(x['ttft_p50_ms']):<8}  "
            f"{fmt(d['ttft_p99_ms']):>8} / {fmt(x['ttft_p99_ms']):<8}  "
            f"{fmt(r.get('added_ttft_p50_ms')):>7} / {fmt(r.get('added_ttft_p99_ms')):<7}")
    out.append("")
    out.append(f"{'scenario':<{w}}  {'chunks/s':>19}  {'ratio':>5}  {'client CPU':>13}  "
               f"{'mock CPU':>8}  {'routers':>7}  {'all CPUs':>8}")
    out.append(f"{'':<{w}}  {'direct / routed':>19}  {'':>5}  {'direct/routed':>13}  "
               f"{'direct':>8}  {'routed':>7}  {'routed':>8}")
    for r in (r for r in rows if not r.get("ttft_only")):
        d, x = r["direct"], r["routed"]
        bound = "*" if r["direct_client_bound"] else " "
        full = "†" if r["routed_machine_bound"] else " "
        out.append(
            f"{r['scenario']:<{w}}  {d['chunks_per_s']:>8,.0f}{bound}/ {x['chunks_per_s']:<8,.0f}  "
            f"{fmt(r['throughput_ratio']):>5}  "
            f"{d['client_cpu_share']:>5.0%} / {x['client_cpu_share']:<5.0%}  "
            f"{d['mock_cpu_share']:>8.0%}  {x['routers_cpu_share']:>7.0%}  "
            f"{x['machine_cpu_share']:>7.0%}{full}")
    out.append("")
    out.append(f"{'scenario':<{w}}  {'router CPU µs per chunk':>33}  {'ms/req':>6}  "
               f"{'mock µs/chunk':>15}  {'routers /':>9}")
    out.append(f"{'':<{w}}  {'consumer provider   both    net':>33}  {'both':>6}  "
               f"{'direct / routed':>15}  {'mock':>9}")
    for r in (r for r in rows if not r.get("ttft_only")):
        cpu = r.get("router_cpu_us_per_chunk") or {}
        out.append(
            f"{r['scenario']:<{w}}  {fmt(cpu.get('consumer'), '.1f'):>8} "
            f"{fmt(cpu.get('provider'), '.1f'):>8} {fmt(cpu.get('both'), '.1f'):>6} "
            f"{fmt(cpu.get('both_net_of_idle'), '.1f'):>6}  "
            f"{fmt(r.get('router_cpu_ms_per_request')):>6}  "
            f"{fmt(r['direct']['mock_cpu_us_per_chunk'], '.1f'):>6} / "
            f"{fmt(r['routed']['mock_cpu_us_per_chunk'], '.1f'):<6}  "
            f"{fmt(r.get('router_cpu_vs_mock'), '.2f'):>8}×")
    return out


def _issue13_targets(rows: list[dict[str, Any]]) -> list[str]:
    out = ["targets (issue 13; paced mock):"]
    for r in rows:
        if not r["paced"]:
            continue
        ratio, added = r["throughput_ratio"], r.get("added_ttft_p50_ms")
        cpu = r.get("router_cpu_vs_mock")
        c = r["concurrency"]
        if c == MANY_TARGET_STREAMS and ratio is not None:
            out.append(f"  chunks/s ≥ {MANY_RATIO_TARGET:g}× direct, {r['scenario']}: "
                       f"{ratio:.3f}  {verdict(ratio >= MANY_RATIO_TARGET)}")
            if added is not None:
                out.append(f"  added TTFT p50 ≤ {MANY_TTFT_TARGET_MS:g} ms, {r['scenario']}: "
                           f"{added:.2f} ms  {verdict(added <= MANY_TTFT_TARGET_MS)}")
        elif c > MANY_TARGET_STREAMS and ratio is not None:
            out.append(f"  {r['scenario']} (reported): chunks/s ratio {ratio:.3f}, added TTFT "
                       f"p50 {fmt(added)} ms, routers {fmt(cpu)}× the mock's CPU per chunk")
        if cpu is not None and 1 < c <= MANY_TARGET_STREAMS and not r["ttft_only"]:
            both = r["router_cpu_us_per_chunk"]["both"]
            out.append(f"  router CPU per chunk ≤ {CPU_VS_MOCK_TARGET:g}× the mock's, "
                       f"{r['scenario']}: {both:.1f} µs = {cpu:.2f}×  "
                       f"{verdict(cpu <= CPU_VS_MOCK_TARGET)}")
        if c == 1 and added is not None:
            if r["stream"]:
                out.append(f"  c=1 added TTFT p50 ≤ {C1_TTFT_TARGET_MS:g} ms, {r['scenario']}: "
                           f"{added:.2f} ms  {verdict(added <= C1_TTFT_TARGET_MS)}")
            else:
                out.append(f"  not-streamed added p50 ≤ {WHOLE_TARGET_MS:g} ms, "
                           f"{r['scenario']}: {added:.2f} ms  "
                           f"{verdict(added <= WHOLE_TARGET_MS)}")
    return out


def _design_targets(rows: list[dict[str, Any]], concurrency: int) -> list[str]:
    out = ["targets (DESIGN.md §6):"]
    for r in rows:
        if (r["concurrency"] == 1 and not r["paced"] and r["stream"]
                and r.get("added_ttft_p50_ms") is not None):
            added = r["added_ttft_p50_ms"]
            out.append(f"  added TTFT p50 ≤ {TTFT_TARGET_MS:g} ms, {r['scenario']} "
                       f"({r['tokens_per_reply']}-token replies): {added:.2f} ms  "
                       f"{verdict(added <= TTFT_TARGET_MS)}")
    for r in rows:
        ratio = r["throughput_ratio"]
        if r["concurrency"] == concurrency and ratio is not None:
            if r["paced"]:
                out.append(f"  throughput ratio ≥ {RATIO_TARGET:g}, {r['scenario']}: "
                           f"{ratio:.3f}  {verdict(ratio >= RATIO_TARGET)}")
            else:
                bound = " (direct baseline bound by the bench)" if r["direct_client_bound"] \
                    else ""
                out.append(f"  saturated ratio, {r['scenario']} (reported): {ratio:.3f}{bound}")
    for r in rows:
        cpu = r.get("router_cpu_us_per_chunk")
        if cpu and r["concurrency"] == concurrency:
            out.append(f"  router CPU per chunk, both ≤ {CPU_TARGET_US:g} µs, {r['scenario']}: "
                       f"{cpu['both']:.1f} µs  {verdict(cpu['both'] <= CPU_TARGET_US)}")
    return out


def render(report: dict[str, Any]) -> str:
    rows = report["results"]
    out = [f"proxy-router overhead vs a MOCK OpenAI backend ({report['cpus']} CPUs, "
           f"Python {report['python']}, {report['seconds']} s)", ""]
    if rows:
        out += _tables(rows)
    failures = sum(r[k]["failures"] for r in rows for k in ("direct", "routed"))
    idle = max((r["router_idle_cpu_share"] for r in rows), default=0.0)
    out += [
        f"  * direct baseline bound by the bench client (≥ {CLIENT_BOUND_SHARE:.0%} of a core) "
        "or by client + mock filling the CPUs:",
        "    the true direct rate is higher, so the ratio flatters the routers",
        f"  † routed rounds used ≥ {CLIENT_BOUND_SHARE:.0%} of all CPUs (client + routers + "
        "mock): the routed side is bound by this machine",
        f"  net = minus the routers' idle background CPU (chain polling, ≤ {idle:.1%} of a "
        "core); mock µs/chunk: its own CPU per chunk it writes (direct = the floor);",
        "  routers / mock = both routers' CPU per chunk / the mock's in the direct rounds;",
        "  not streamed: TTFT = the whole reply; steady: a window after warm-up, the TTFT of "
        "the streams started in it",
        f"  failed streams: {failures}"]
    for r in rows:
        for k in ("direct", "routed"):
            for text, count in r[k]["errors"].items():
                out.append(f"    {r['scenario']}, {k}: {count}× {text}")
    out.append("")
    out += _issue13_targets(rows)
    out.append("")
    out += _design_targets(rows, report["args"]["concurrency"])
    out += ["", "peers, 50 tok/s MOCK streams, as measured by the issue's reporter (issue 13), "
            "not in this run:",
            f"  {'':<36}  {'LiteLLM 1.108 proxy':>19}  {'Portkey gateway 1.15':>20}"]
    out += [f"  {what:<36}  {lite:>19}  {port:>20}" for what, lite, port in PEERS]
    for name, entry in report.get("profiles", {}).items():
        out += ["", f"py-spy {name}: {entry['file']}"]
        if "error" in entry:
            out.append(f"  (not readable: {entry['error']})")
        for func, own, total in entry.get("top_self", []):
            out.append(f"  {own:6.1%} self {total:6.1%} total  {func}")
    return "\n".join(out)


def _many(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated stream counts") from None
    if any(v < 2 for v in values):
        raise argparse.ArgumentTypeError("each stream count must be at least 2")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=200,
                        help="no-delay c=1: sequential requests per side (for each reply length)")
    parser.add_argument("--paced-requests", type=int, default=150,
                        help="paced c=1: sequential requests per side (streamed, and again "
                             "not streamed)")
    parser.add_argument("--paced-c1-tokens", type=int, default=5,
                        help="paced c=1: max_tokens per request (keeps the run short; "
                             "TTFT does not depend on it)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent streams")
    parser.add_argument("--rounds", type=int, default=6,
                        help="no-delay c=N: rounds per side, interleaved direct/routed")
    parser.add_argument("--paced-rounds", type=int, default=8,
                        help="paced c=N: rounds per side, interleaved direct/routed")
    parser.add_argument("--many", type=_many, default=[256, 1024], metavar="N,N",
                        help="paced: stream counts run with each start pattern")
    parser.add_argument("--many-rounds", type=int, default=3,
                        help="paced --many, burst and staggered: rounds per side")
    parser.add_argument("--steady-rounds", type=int, default=2,
                        help="paced --many, steady: windows per side")
    parser.add_argument("--steady-window", type=float, default=3.0,
                        help="steady: seconds measured per window")
    parser.add_argument("--steady-warmup", type=float, default=1.0,
                        help="steady: seconds after the ramp (one reply) before the window")
    parser.add_argument("--nodelay-tokens", type=int, default=200,
                        help="tokens per reply from the no-delay mock")
    parser.add_argument("--paced-tokens", type=int, default=50,
                        help="tokens per reply from the paced mock")
    parser.add_argument("--token-delay", type=float, default=0.02,
                        help="paced mock: seconds per token")
    parser.add_argument("--idle-window", type=float, default=3.0,
                        help="seconds of quiet to measure the routers' idle background CPU")
    parser.add_argument("--request-timeout", type=float, default=180.0)
    parser.add_argument("--scenarios", type=lambda t: [g.strip() for g in t.split(",")
                                                       if g.strip()],
                        default=[], metavar="GLOB,...",
                        help="run only these scenarios (names from --list; globs such as "
                             "'paced-256-*' allowed); default: all")
    parser.add_argument("--list", action="store_true", help="list the scenario names and exit")
    parser.add_argument("--skip-nodelay", action="store_true")
    parser.add_argument("--skip-paced", action="store_true")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy (when on PATH or in the venv) records the consumer and "
                             "provider as speedscope files into DIR during one extra, "
                             "unmeasured routed round of --profile-scenario")
    parser.add_argument("--profile-scenario", default="paced-N-steady",
                        help="which paced scenario --profile repeats (N = 256; default: "
                             "the first 256-stream one selected)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20 c=1 requests, 1 round of c=N and of each "
                             "--many pattern, 1 s idle window, 2 s steady window")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON on stdout (the table goes to stderr)")
    parser.add_argument("--keep", action="store_true", help="keep the devnet and mock logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = args.paced_requests = 20
        args.rounds = args.paced_rounds = 1
        args.many_rounds = args.steady_rounds = 1
        args.steady_window = 2.0
        args.steady_warmup = 0.5
        args.idle_window = 1.0
    if args.profile is not None and Profiler.executable() is None:
        parser.error("--profile needs py-spy on PATH (e.g. .venv/bin/pip install py-spy)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, specs in phase_specs(args).items():
            for spec in specs:
                print(f"{spec.key:<24} {name:<8} {spec.label}")
        return 0

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
