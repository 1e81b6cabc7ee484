"""Approval flood soak: ``session.request`` from throwaway keys vs the provider's memory.

    .venv/bin/python bench/soak_approvals.py [--requests 50000] [--quick] [--json]

The hostile-network finding: provider memory grew ~1 KB per distinct ``session.request``
sender and never came back, and approvals were handed to keys holding no MOR. This bench
starts a devnet (anvil, contracts, provider and consumer routers) in front of the MOCK
OpenAI backend (``proxy_router.dev.mock_openai``, no model) with a short replay window
(``MOR_RPC_REPLAY_WINDOW_S``, default 10 s), opens a few raw WebSockets to the provider's
MOR-RPC endpoint and sends ``session.request {bidId, key}`` frames, each signed by a fresh
random wallet (no MOR, no ETH) with a fresh session key, keeping a bounded number in flight
per connection and reading every reply.

It reports the replies by code (``INSUFFICIENT_FUNDS`` is the expected refusal; an approval
is counted as ``APPROVED``), the request rate, and the provider process's VmRSS
(/proc/<pid>/status; the provider is another process, so nothing here, the bench's own
garbage collector included, affects it) after a warm-up, after every ``--sample-every``
requests, at the end, and again after waiting the replay window + 2 s and sending a few
more requests (so state that expires lazily, on the next request, is dropped). A probe
signed ``window + 3`` s in the past tells whether the provider honours the window asked for
(``STALE_MESSAGE``) or keeps nonces longer. No thresholds: the exit status is 1 only when
the harness itself fails (the devnet does not start, a connection drops, replies go
missing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from harness import MockBackend, cpu_of, say

from proxy_router.dev.devnet import Devnet, DevnetState
from proxy_router.morrpc import SessionKey, Signer
from proxy_router.morrpc.protocol import (
    HARD_FRAME_BYTES,
    PING,
    WS_PATH,
    encode_frame,
    request_frame,
)
from proxy_router.ports import free_port

APPROVED = "APPROVED"
"""Reply code counted for a ``session.request`` that got an approval (a result frame)."""
EXPECTED = "INSUFFICIENT_FUNDS"
METHOD = "session.request"


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of one process in MB (MiB), from /proc/<pid>/status."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024  # kB
    return values["VmRSS"], values["VmHWM"]


class HarnessError(Exception):
    """The bench could not measure (a connection dropped, replies went missing)."""


# -- the flood ------------------------------------------------------------------------------


def throwaway_request(request_id: int, bid_id: str) -> str:
    """One ``session.request`` signed by a brand-new wallet, as wire text."""
    signer = Signer.from_key("0x" + os.urandom(32).hex())
    params = {"bidId": bid_id, "key": SessionKey.generate().public_key_hex}
    return encode_frame(signer.sign_frame(request_frame(request_id, METHOD, params,
                                                        signer.address)))


def reply_code(frame: dict[str, Any]) -> str:
    if "result" in frame:
        return APPROVED if "approval" in (frame.get("result") or {}) else "OK"
    error = frame.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return str(code) if code is not None else "MALFORMED_REPLY"


class Connection:
    """One raw MOR-RPC WebSocket: at most ``inflight`` requests unanswered at a time."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, inflight: int,
                 codes: Counter[str]) -> None:
        self.ws = ws
        self.codes = codes
        self.slots = asyncio.Semaphore(inflight)
        self.pending: set[int] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.ids = itertools.count(1)
        self.failure: str | None = None
        self.probe: asyncio.Future[dict[str, Any]] | None = None
        self.probe_id = -1
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                frame = json.loads(msg.data)
                rid = frame.get("id")
                if rid == self.probe_id and self.probe is not None and not self.probe.done():
                    self.probe.set_result(frame)
                    continue
                if rid not in self.pending:
                    self.codes["UNMATCHED_REPLY:" + reply_code(frame)] += 1
                    continue
                self.pending.discard(rid)
                self.codes[reply_code(frame)] += 1
                self.slots.release()
                if not self.pending:
                    self.idle.set()
        except Exception as exc:  # the bench's own failure: report it, stop the senders
            self.failure = f"{type(exc).__name__}: {exc}"
        if self.failure is None:
            self.failure = f"the provider closed the connection ({self.ws.close_code})"
        self.slots.release()  # wake a sender blocked on a slot: it sees the failure
        self.idle.set()

    def check(self) -> None:
        if self.failure is not None:
            raise HarnessError(self.failure)

    async def send(self, n: int, bid_id: str) -> None:
        for _ in range(n):
            await self.slots.acquire()
            self.check()
            rid = next(self.ids)
            text = throwaway_request(rid, bid_id)
            self.pending.add(rid)
            self.idle.clear()
            await self.ws.send_str(text)

    async def drain(self, timeout: float) -> None:
        """Wait for every reply; missing ones after ``timeout`` are a harness failure."""
        try:
            async with asyncio.timeout(timeout):
                while self.pending and self.failure is None:
                    await self.idle.wait()
        except TimeoutError:
            raise HarnessError(f"{len(self.pending)} replies missing after {timeout:g} s") \
                from None
        self.check()

    async def stale_probe(self, age_s: float, timeout: float) -> str:
        """Code of a ``network.ping`` signed ``age_s`` seconds ago (``OK`` if accepted)."""
        signer = Signer.from_key("0x" + os.urandom(32).hex())
        self.probe_id = 10**15 + next(self.ids)
        frame = request_frame(self.probe_id, PING, {}, signer.address)
        frame["timestamp"] = int(time.time() - age_s)
        self.probe = asyncio.get_running_loop().create_future()
        await self.ws.send_str(encode_frame(signer.sign_frame(frame)))
        try:
            async with asyncio.timeout(timeout):
                reply = await self.probe
        except TimeoutError:
            raise HarnessError("no reply to the stale-timestamp probe") from None
        return reply_code(reply)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.reader


@dataclass
class Sample:
    label: str
    requests: int
    """Requests in this step."""
    total: int
    """Requests sent so far, warm-up included."""
    seconds: float
    rss_mb: float
    hwm_mb: float
    provider_cpu_s: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class Report:
    requests: int
    connections: int
    inflight: int
    replay_window_s: float
    provider_pid: int
    samples: list[Sample] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    window_probe: str = ""
    client_cpu_share: float = 0.0
    seconds: float = 0.0


class Flood:
    def __init__(self, state: DevnetState, args: argparse.Namespace, report: Report) -> None:
        self.state = state
        self.args = args
        self.report = report
        self.codes: Counter[str] = Counter()
        self.conns: list[Connection] = []
        self.http: aiohttp.ClientSession | None = None
        self.sent = 0

    async def __aenter__(self) -> Flood:
        self.http = aiohttp.ClientSession()
        url = f"ws://{self.state.provider_endpoint}{WS_PATH}"
        for _ in range(self.args.connections):
            ws = await self.http.ws_connect(url, compress=0, heartbeat=None,
                                            max_msg_size=HARD_FRAME_BYTES)
            self.conns.append(Connection(ws, self.args.inflight, self.codes))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for conn in self.conns:
            await conn.close()
        if self.http is not None:
            await self.http.close()

    async def step(self, label: str, n: int) -> Sample:
        """``n`` requests spread over the connections, all replies read, then the RSS."""
        share, extra = divmod(n, len(self.conns))
        started = time.perf_counter()
        cpu = cpu_of(self.report.provider_pid)
        await asyncio.gather(*(c.send(share + (i < extra), self.state.bid_id)
                               for i, c in enumerate(self.conns)))
        await asyncio.gather(*(c.drain(self.args.reply_timeout) for c in self.conns))
        seconds = time.perf_counter() - started
        cpu = cpu_of(self.report.provider_pid) - cpu
        self.sent += n
        rss, hwm = rss_mb(self.report.provider_pid)
        sample = Sample(label, n, self.sent, seconds, rss, hwm, cpu)
        self.report.samples.append(sample)
        say(f"  {label:>12}: {self.sent:>7,} sent, {sample.rate:6,.0f} req/s, "
            f"VmRSS {rss:7.1f} MB  {dict(self.codes.most_common(4))}")
        return sample

    async def run(self) -> None:
        args = self.args
        await self.step("warm-up", args.warmup)
        cpu = time.process_time()
        wall = time.perf_counter()
        done = 0
        while done < args.requests:
            n = min(args.sample_every, args.requests - done)
            done += n
            await self.step("end" if done >= args.requests else f"{done:,}", n)
        self.report.client_cpu_share = ((time.process_time() - cpu)
                                        / (time.perf_counter() - wall))
        window = args.replay_window
        self.report.window_probe = await self.conns[0].stale_probe(window + 3,
                                                                   args.reply_timeout)
        say(f"  waiting {window + 2:g} s (replay window + 2 s); "
            f"probe signed {window + 3:g} s ago got {self.report.window_probe}")
        await asyncio.sleep(window + 2)
        await self.step("after window", args.tail)


async def soak(state: DevnetState, args: argparse.Namespace, report: Report) -> None:
    async with Flood(state, args, report) as flood:
        try:
            await flood.run()
        finally:
            report.codes = dict(flood.codes.most_common())


def run(args: argparse.Namespace) -> Report:
    root = Path(tempfile.mkdtemp(prefix="soak-approvals-"))
    mock = MockBackend(free_port(), root / "mock.log")
    net = Devnet(root / "devnet", progress=lambda m: say(f"  devnet {m}"))
    started = time.monotonic()
    ok = False
    try:
        say(f"MOCK OpenAI backend on 127.0.0.1:{mock.port}")
        mock.start()
        state = net.up(backend_url=mock.base_url, concurrent_slots=4, extra_router_env={
            "MOR_RPC_REPLAY_WINDOW_S": f"{args.replay_window:g}",
            # one bench client on loopback stands for many addresses: lift the per-IP rate
            "SESSION_REQUESTS_PER_IP_S": "1000000"})
        report = Report(args.requests, args.connections, args.inflight, args.replay_window,
                        state.pids["provider"])
        say(f"flooding provider PID {report.provider_pid} at {state.provider_endpoint}: "
            f"{args.warmup:,} warm-up + {args.requests:,} + {args.tail:,} session.requests, "
            f"{args.connections} connections x {args.inflight} in flight")
        try:
            asyncio.run(soak(state, args, report))
        finally:
            report.seconds = round(time.monotonic() - started, 1)
        ok = True
        return report
    finally:
        say("  stopping the routers, anvil and the mock")
        try:
            if not net.down():
                Devnet.down_pids(net.pids)
        finally:
            mock.stop()
            if args.keep or not ok:
                say(f"logs kept in {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)


# -- report -----------------------------------------------------------------------------------


def render(report: Report) -> str:
    samples = report.samples
    warm = samples[0]
    end = next(s for s in samples if s.label == "end")
    after = samples[-1]
    main = [s for s in samples[1:] if s.label != "after window"]
    main_n = sum(s.requests for s in main)
    main_rate = main_n / sum(s.seconds for s in main)
    main_cpu_ms = sum(s.provider_cpu_s for s in main) / main_n * 1e3
    total = sum(report.codes.values())
    window_ok = report.window_probe == "STALE_MESSAGE"
    out = [f"Approval flood soak: {report.requests:,} session.requests from distinct "
           f"throwaway keys ({report.connections} connections x {report.inflight} in flight, "
           f"{report.seconds} s)",
           f"provider PID {report.provider_pid}; replay window asked {report.replay_window_s:g} s "
           f"(probe signed {report.replay_window_s + 3:g} s ago: {report.window_probe}"
           + ("" if window_ok else ": the provider keeps nonces longer than asked") + ")", "",
           f"{'step':>12}  {'requests':>8}  {'sent':>7}  {'req/s':>6}  {'VmRSS MB':>8}  "
           f"{'Δ warm MB':>9}  {'VmHWM MB':>8}  {'prov. CPU ms/req':>16}"]
    for s in samples:
        delta = "-" if s is warm else f"{s.rss_mb - warm.rss_mb:+.1f}"
        out.append(f"{s.label:>12}  {s.requests:>8,}  {s.total:>7,}  {s.rate:>6,.0f}  "
                   f"{s.rss_mb:>8.1f}  {delta:>9}  {s.hwm_mb:>8.1f}  "
                   f"{s.provider_cpu_s / s.requests * 1e3:>16.2f}")
    out += ["", f"replies by code ({total:,}, every step):"]
    out += [f"  {code:<24} {n:>8,}" for code, n in report.codes.items()]
    approved = report.codes.get(APPROVED, 0)
    out += ["",
            f"requests/s (measured steps): {main_rate:,.0f}; provider CPU {main_cpu_ms:.2f} ms "
            f"per request; bench client CPU {report.client_cpu_share:.0%} of a core",
            f"approvals handed to keys with no MOR: {approved:,}"
            + ("" if report.codes.get(EXPECTED) else f" (no {EXPECTED} reply seen)"),
            f"provider VmRSS warm {warm.rss_mb:.1f} MB, end {end.rss_mb:.1f} MB, after window "
            f"{after.rss_mb:.1f} MB: delta {end.rss_mb - warm.rss_mb:+.1f} MB at the end, "
            f"{after.rss_mb - warm.rss_mb:+.1f} MB after the window "
            f"({(after.rss_mb - warm.rss_mb) * 1024 * 1024 / report.requests:+.0f} B per "
            f"request); peak {max(s.hwm_mb for s in samples):.1f} MB"]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=50_000,
                        help="measured session.requests, each from a distinct throwaway key")
    parser.add_argument("--connections", type=int, default=4, help="WebSockets to the provider")
    parser.add_argument("--inflight", type=int, default=64,
                        help="unanswered requests allowed per connection")
    parser.add_argument("--warmup", type=int, default=1_000,
                        help="requests before the first RSS sample (not counted in --requests)")
    parser.add_argument("--sample-every", type=int, default=10_000,
                        help="requests between RSS samples")
    parser.add_argument("--tail", type=int, default=200,
                        help="requests sent after the replay-window wait")
    parser.add_argument("--replay-window", type=float, default=10.0,
                        help="MOR_RPC_REPLAY_WINDOW_S given to the routers (seconds, ≥ 5)")
    parser.add_argument("--reply-timeout", type=float, default=120.0,
                        help="seconds to wait for the replies of one step")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 5,000 requests, an RSS sample every 1,000")
    parser.add_argument("--json", action="store_true",
                        help="print the report as JSON on stdout (the table goes to stderr)")
    parser.add_argument("--keep", action="store_true", help="keep the devnet and mock logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = 5_000
        args.sample_every = 1_000
    if min(args.requests, args.connections, args.inflight, args.warmup, args.sample_every,
           args.tail) < 1:
        parser.error("counts must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(_sig: int, _frame: object) -> None:
        raise SystemExit(143)  # unwind through run()'s finally: stop what we started

    signal.signal(signal.SIGTERM, on_term)
    try:
        report = run(args)
    except (HarnessError, TimeoutError, RuntimeError, OSError, aiohttp.ClientError) as exc:
        say(f"harness failure: {type(exc).__name__}: {exc}")
        return 1
    table = render(report)
    if args.json:
        say(table)
        print(json.dumps({**asdict(report),
                          "samples": [{**asdict(s), "rate": s.rate} for s in report.samples]},
                         indent=2))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
