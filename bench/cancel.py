"""Cancellation: a client closes its stream → how soon the backend request ends, and
how soon the next request's first token comes, measured in one run.

    .venv/bin/python bench/cancel.py [--rounds 10] [--backend both|real|mock] [--json]

For each backend — the real SmolLM2-135M model in llama.cpp (llama-cpp-python's
server, one generation at a time), and the MOCK OpenAI server
(``proxy_router.dev.mock_openai``, canned tokens paced 20 ms apart, no model) as the
baseline — a devnet whose provider reaches the backend through a TCP tap run by this
process in a thread of its own. The tap sees what the backend sees: each HTTP request
the provider sends, each reply's end (``data: [DONE]``) and the provider closing the
connection. A stream the provider closes before its end is an abort, and the time the
tap sees it is where the provider's backend request ends.

Each round, interleaved so that drift on this machine hits every figure alike:
0. prime: the long prompt answered in full, for as many tokens as step 2 reads, so that
   llama.cpp's prompt cache holds what a closed stream leaves in it (the next prompt
   re-evaluates all but their common prefix either way: a cost of the cache, not of
   waiting);
1. idle: a short prompt with nothing else running; its TTFT is the baseline;
2. cancel: a long stream (hundreds of tokens), closed by the client after its first
   few content chunks; close → abort is the tap's time of the provider's close minus
   the client's close (same clock, ``time.monotonic``); an abort the tap never saw is
   a reply the backend generated to its end (reported with how long that took);
3. next: the short prompt again, sent at once after the close; its TTFT against the
   idle one's tells whether it waited behind the closed stream's generation.
Between rounds the bench waits until the provider reports no prompt in flight.
TTFT is request start → first ``data:`` chunk with content. Target: close → abort
< 100 ms; next TTFT ≈ idle TTFT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from harness import MockBackend, say

from proxy_router.dev.anvil import dev_key
from proxy_router.dev.devnet import MODEL_NAME, Devnet, DevnetState
from proxy_router.dev.smollm2 import smollm2_gguf_path
from proxy_router.morrpc import RpcClient, Signer
from proxy_router.ports import free_port
from proxy_router.process import ManagedProcess, spawn
from proxy_router.provider.llama import EmbeddedLlamaServer

ABORT_TARGET_MS = 100.0
OBSERVER = 7  # an anvil dev account that only reads provider.capabilities
SHORT = [{"role": "user", "content": "Say hello."}]
LONG = [{"role": "user", "content": "Write a very long story about a dragon and a knight, "
                                    "with many chapters."}]
_DONE = b"data: [DONE]"


# -- the tap ------------------------------------------------------------------------------


@dataclass
class Exchange:
    """One HTTP request the provider sent the backend, as the tap saw it."""

    started: float
    stream: bool
    done: float | None = None
    """When the backend's reply ended (``[DONE]``)."""
    aborted: float | None = None
    """When the provider closed the connection before the reply's end."""
    bytes_back: int = 0


@dataclass
class Tap:
    """A TCP relay provider → backend that timestamps requests, reply ends and aborts.
    It runs its own event loop in a thread, so the bench's client never delays a stamp."""

    upstream_port: int
    port: int = field(default_factory=free_port)
    exchanges: list[Exchange] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Tap:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(asyncio.start_server(self._relay, "127.0.0.1", self.port))
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, name="tap", daemon=True).start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def streams(self) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if e.stream]

    def in_flight(self) -> int:
        """Streams whose reply has neither ended nor been aborted."""
        with self._lock:
            return sum(1 for e in self.exchanges
                       if e.stream and e.done is None and e.aborted is None)

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            down_w.close()
            return
        current: list[Exchange] = []  # the request in flight on this connection, if any

        async def to_backend() -> None:
            while data := await down_r.read(65536):
                if data.startswith((b"POST ", b"GET ")):
                    now = time.monotonic()
                    if current and current[0].done is None:  # the next request: over
                        current[0].done = now
                    exchange = Exchange(now, stream=b'"stream":true' in data)
                    with self._lock:
                        self.exchanges.append(exchange)
                    current[:] = [exchange]
                elif current and b'"stream":true' in data:  # the body came on its own
                    current[0].stream = True
                up_w.write(data)
                await up_w.drain()
            # the provider closed its side: an abort if a reply was still coming
            now = time.monotonic()
            if current and current[0].done is None:
                current[0].aborted = now

        async def to_provider() -> None:
            while data := await up_r.read(65536):
                if current:
                    current[0].bytes_back += len(data)
                    if _DONE in data and current[0].aborted is None:
                        current[0].done = time.monotonic()
                down_w.write(data)
                await down_w.drain()

        tasks = [asyncio.create_task(to_backend()), asyncio.create_task(to_provider())]
        try:  # one side ended (or failed): the connection is over
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (up_w, down_w):
                w.close()


# -- the client ---------------------------------------------------------------------------


@dataclass
class Round:
    idle_ttft_ms: float | None = None
    next_ttft_ms: float | None = None
    abort_ms: float | None = None
    """Client close → the provider's close of the backend request."""
    ran_on_ms: float | None = None
    """Client close → the backend's reply end, when no abort came."""
    next_error: str | None = None


class Client:
    def __init__(self, state: DevnetState, tap: Tap, args: argparse.Namespace) -> None:
        self.state = state
        self.tap = tap
        self.args = args
        self.url = state.consumer_url + "/chat/completions"

    def body(self, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        return {"model": self.state.model_name, "messages": messages,
                "max_tokens": max_tokens, "stream": True}

    async def ttft(self, http: aiohttp.ClientSession, messages: list[dict[str, str]] = SHORT,
                   max_tokens: int = 8) -> float:
        """A stream read to its end; ms to its first content chunk."""
        started = time.monotonic()
        first: float | None = None
        async with http.post(self.url, json=self.body(messages, max_tokens)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:160]}")
            async for line in resp.content:
                if first is None and line.startswith(b"data: {") and b'"content"' in line \
                        and b'"role"' not in line:
                    first = time.monotonic()
        if first is None:
            raise RuntimeError("no content")
        return (first - started) * 1000

    async def cancel(self, http: aiohttp.ClientSession) -> float:
        """A long stream closed after a few content chunks; the close's time."""
        resp = await http.post(self.url, json=self.body(LONG, self.args.long_tokens))
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:160]}")
        seen = 0
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"content"' in line:
                seen += 1
                if seen >= self.args.read_chunks:
                    break
        closed = time.monotonic()
        resp.close()  # drops the connection: the client is gone
        return closed

    async def idle(self) -> None:
        """Until the provider has no prompt in flight and the tap no reply coming."""
        async with RpcClient(self.state.provider_endpoint, Signer.from_key(dev_key(OBSERVER)),
                             self.state.provider_address) as rpc:
            deadline = time.monotonic() + self.args.settle_s
            while time.monotonic() < deadline:
                caps = await rpc.call("provider.capabilities", {})
                if caps["models"][0]["capacity"]["promptsInFlight"] == 0 \
                        and not self.tap.in_flight():
                    return
                await asyncio.sleep(0.05)

    async def round(self, http: aiohttp.ClientSession) -> Round:
        r = Round()
        await self.idle()
        await self.ttft(http, LONG, self.args.read_chunks)  # see "prime" in the docstring
        await self.idle()
        r.idle_ttft_ms = await self.ttft(http)
        await self.idle()
        closed = await self.cancel(http)
        try:
            r.next_ttft_ms = await self.ttft(http)
        except RuntimeError as exc:
            r.next_error = str(exc)
        await self.idle()
        before = [e for e in self.tap.streams() if e.started < closed]
        exchange = before[-1] if before else None  # the stream the client closed
        if exchange is not None:
            if exchange.aborted is not None:
                r.abort_ms = (exchange.aborted - closed) * 1000
            elif exchange.done is not None:
                r.ran_on_ms = (exchange.done - closed) * 1000
        return r


# -- one backend --------------------------------------------------------------------------


def start_backend(kind: str, workdir: Path, args: argparse.Namespace
                  ) -> tuple[int, ManagedProcess | MockBackend, str]:
    """The backend process: llama.cpp with SmolLM2, or the paced MOCK."""
    port = free_port()
    if kind == "mock":
        mock = MockBackend(port, workdir / "mock.log", tokens=100_000,
                           token_delay=args.mock_token_delay).start()
        return port, mock, f"MOCK OpenAI server, {args.mock_token_delay * 1000:g} ms/token"
    llama = EmbeddedLlamaServer(smollm2_gguf_path(), port=port, model_alias=MODEL_NAME,
                                n_ctx=2048, n_threads=2)
    proc = spawn(llama.command(), name="llama.cpp", log_path=workdir / "llama.log",
                 ready=lambda: _answers(f"http://127.0.0.1:{port}/v1/models"), timeout=180,
                 interval=0.25)
    return port, proc, "llama.cpp, SmolLM2-135M (real model)"


def _answers(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


async def measure(state: DevnetState, tap: Tap, args: argparse.Namespace) -> list[Round]:
    client = Client(state, tap, args)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await client.ttft(http)  # opens the paid session: not measured
        await client.ttft(http)  # warms the backend's prompt cache
        rounds = []
        for i in range(args.rounds):
            rounds.append(await client.round(http))
            say(f"  round {i + 1}/{args.rounds}: {rounds[-1]}")
        return rounds


def run_backend(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-cancel-{kind}-"))
    backend_port, proc, label = start_backend(kind, workdir, args)
    tap = Tap(backend_port).start()
    net = Devnet(workdir / "devnet", progress=lambda _: None)
    say(f"{label}: devnet up, provider → tap :{tap.port} → backend :{backend_port}")
    try:
        state = net.up(backend_url=tap.url, concurrent_slots=args.slots)
        rounds = asyncio.run(measure(state, tap, args))
    finally:
        net.down()
        tap.stop()
        proc.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return summarise(kind, label, rounds)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(kind: str, label: str, rounds: list[Round]) -> dict[str, Any]:
    aborts = [r.abort_ms for r in rounds if r.abort_ms is not None]
    ran_on = [r.ran_on_ms for r in rounds if r.ran_on_ms is not None]
    idle = [r.idle_ttft_ms for r in rounds if r.idle_ttft_ms is not None]
    nxt = [r.next_ttft_ms for r in rounds if r.next_ttft_ms is not None]
    ratios = [r.next_ttft_ms / r.idle_ttft_ms for r in rounds
              if r.next_ttft_ms is not None and r.idle_ttft_ms]
    return {
        "backend": kind, "label": label, "rounds": len(rounds),
        "aborted": len(aborts), "ran_to_end": len(ran_on),
        "abort_ms": {"p50": _median(aborts), "max": max(aborts, default=None)},
        "ran_on_ms_p50": _median(ran_on),
        "idle_ttft_ms_p50": _median(idle), "next_ttft_ms_p50": _median(nxt),
        "next_ttft_ms_max": max(nxt, default=None),
        "next_over_idle_p50": _median(ratios),
        "next_errors": [r.next_error for r in rounds if r.next_error],
    }


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def render(rows: list[dict[str, Any]]) -> str:
    out = ["backend                                 rounds aborted  close→abort ms   "
           "ran on ms   TTFT ms idle / next (max)   next/idle",
           "                                                         p50 / max          p50"]
    for r in rows:
        out.append(
            f"{r['label']:<40}{r['rounds']:>6} {r['aborted']:>7}  "
            f"{fmt(r['abort_ms']['p50']):>7} / {fmt(r['abort_ms']['max']):<7}"
            f"{fmt(r['ran_on_ms_p50'], '.0f'):>8}    "
            f"{fmt(r['idle_ttft_ms_p50']):>7} / {fmt(r['next_ttft_ms_p50']):>7} "
            f"({fmt(r['next_ttft_ms_max'])})   {fmt(r['next_over_idle_p50'], '.2f'):>6}")
        if r["next_errors"]:
            out.append(f"  next request failed {len(r['next_errors'])}×: {r['next_errors'][0]}")
    out.append("")
    for r in rows:
        p50 = r["abort_ms"]["p50"]
        ok = p50 is not None and r["aborted"] == r["rounds"] and \
            (r["abort_ms"]["max"] or 0) < ABORT_TARGET_MS
        out.append(f"  close → abort < {ABORT_TARGET_MS:g} ms, {r['label']}: "
                   f"{'every round' if r['aborted'] == r['rounds'] else 'not every round'}"
                   f", max {fmt(r['abort_ms']['max'])} ms  {'PASS' if ok else 'FAIL'}")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", choices=["both", "real", "mock"], default="both")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--read-chunks", type=int, default=5,
                        help="content chunks the client reads before it closes")
    parser.add_argument("--long-tokens", type=int, default=1000,
                        help="max_tokens of the stream the client closes")
    parser.add_argument("--mock-token-delay", type=float, default=0.02)
    parser.add_argument("--slots", type=int, default=4, help="the provider's prompt slots")
    parser.add_argument("--settle-s", type=float, default=60.0,
                        help="longest wait for the provider to go idle between steps")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON on stdout (the table goes to stderr)")
    parser.add_argument("--keep", action="store_true", help="keep the devnet and backend logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(_sig: int, _frame: object) -> None:
        raise SystemExit(143)  # unwind through run_backend's finally

    signal.signal(signal.SIGTERM, on_term)
    kinds = ["real", "mock"] if args.backend == "both" else [args.backend]
    rows = [run_backend(kind, args) for kind in kinds]
    table = render(rows)
    if args.json:
        say(table)
        print(json.dumps(rows, indent=2))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
