"""Property-based fuzzing of every untrusted input, bounded for CI (about 20 s on 2 cores).

1. MOR-RPC frames sent by an unauthenticated (or hostile but signed) peer to a live
   provider: arbitrary frames, arbitrary JSON, nesting bombs, mutated signed frames.
   After every example a signed ``network.ping`` on the SAME socket must still get a
   verified answer, so a frame that kills the socket or the process is caught at once.
2. HTTP bodies POSTed to the consumer's OpenAI-compatible API: never a 5xx but the one
   the fakes produce on purpose, and every error is OpenAI-shaped.
3. The consumer's frame readers (``_chunk_frame``, ``decode_frame``) on hostile text,
   plus the 70,000-deep bomb in a child interpreter, where a C-stack overflow shows up
   as exit code -11 instead of killing pytest.

How the async work runs: every test here is a plain ``def`` decorated with ``@given``,
and every coroutine runs on one private event loop in a background thread
(``LoopThread.run``). pytest-asyncio (auto mode, session-scoped loop) never sees these
tests, so nothing depends on how it wraps hypothesis, and the socket and servers live
across examples (module-scoped fixtures) instead of being rebuilt per example.

Why the provider is a child process (``tests/morrpc/serve.py``, the same handlers as the
``live`` fixture) rather than in-process: a frame that overflows the C stack
(py_ecc raises the recursion limit to 100,000, so ``json.loads`` of ``"[" * 70000``
segfaults) would kill pytest itself and lose the report of the whole run. In a child it
is one failing property whose message names the signal, and the next example gets a
fresh provider, so hypothesis can still shrink the input.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import string
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from proxy_router.chain.types import Model
from proxy_router.consumer.access import AccessPolicy, token_path
from proxy_router.consumer.api import ConsumerApi
from proxy_router.consumer.chat import ChatService
from proxy_router.metrics import Metrics
from proxy_router.morrpc import ErrorCode, RpcError, Signer
from proxy_router.morrpc.client import _chunk_frame
from proxy_router.morrpc.protocol import (
    CANCEL,
    CREDIT,
    MAX_FRAME_BYTES,
    PING,
    PROTOCOL,
    decode_frame,
    encode_frame,
    request_frame,
)
from proxy_router.morrpc.signing import new_nonce, recover_frame_signer
from proxy_router.ports import free_port, port_open
from proxy_router.process import ManagedProcess, spawn
from tests.consumer.conftest import FakeIndex, FakeSessions, consumer_settings
from tests.morrpc import serve as rpc_serve
from tests.morrpc.conftest import CONSUMER_KEY, PROVIDER_KEY, STRANGER_KEY

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]
ERROR_CODES = frozenset(code.value for code in ErrorCode)
REPLY_TIMEOUT_S = 5.0
STALE_S = 120  # well past the 60 s freshness window, so timing never makes it borderline
PROVIDER = Signer.from_key(PROVIDER_KEY)
CONSUMER = Signer.from_key(CONSUMER_KEY)
STRANGER = Signer.from_key(STRANGER_KEY)
SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


# -- plumbing: one event loop in a thread ------------------------------------------------------


class LoopThread:
    """An event loop running in a daemon thread; ``run`` blocks until a coroutine is done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    runner = LoopThread()
    try:
        yield runner
    finally:
        runner.close()


def signal_name(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"exit code {returncode} ({signal.Signals(-returncode).name})"
    return f"exit code {returncode}"


# -- 1. the provider under fire ---------------------------------------------------------------


class LinkLost(Exception):
    """The socket ended while we waited for the ping's reply."""


@dataclass
class Probe:
    replies: list[Any]
    """Every frame that arrived before the ping's reply (parsed JSON)."""


@dataclass
class ProviderLink:
    """``tests/morrpc/serve.py`` in a child process and one raw WebSocket to it, reused across
    examples; a dead process or socket is replaced at the start of the next example."""

    runner: LoopThread
    log_path: Path
    proc: ManagedProcess | None = None
    http: aiohttp.ClientSession | None = None
    ws: aiohttp.ClientWebSocketResponse | None = None
    starts: int = 0
    url: str = ""
    _log_mark: int = 0
    results_per_nonce: Counter[str] = field(default_factory=Counter)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    # lifecycle

    def ensure(self) -> None:
        if self.proc is None or not self.proc.running:
            self._start_process()
        if self.ws is None or self.ws.closed:
            self.runner.run(self._connect(), timeout=30)

    def _start_process(self) -> None:
        self._stop_process()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        port = free_port()
        self.proc = spawn(
            [sys.executable, rpc_serve.__file__, "--port", str(port), "--key", PROVIDER_KEY],
            name="fuzzed provider", env=env, cwd=REPO_ROOT, log_path=self.log_path,
            ready=lambda: port_open(port), timeout=30)
        self.url = f"ws://127.0.0.1:{port}/mor-rpc"
        self.starts += 1

    def _stop_process(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.running:
            proc.kill(timeout=10)

    async def _connect(self) -> None:
        await self._disconnect()
        self.http = aiohttp.ClientSession()
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            self.ws = await self.http.ws_connect(self.url, max_msg_size=2 * MAX_FRAME_BYTES,
                                                 heartbeat=None)

    async def _disconnect(self) -> None:
        ws, self.ws = self.ws, None
        http, self.http = self.http, None
        if ws is not None:
            with contextlib.suppress(TimeoutError, ConnectionError, aiohttp.ClientError):
                async with asyncio.timeout(1):  # a wedged peer never answers the close
                    await ws.close()
        if http is not None:
            await http.close()

    def close(self) -> None:
        try:
            self.runner.run(self._disconnect(), timeout=10)
        finally:
            self._stop_process()

    def log_tail(self, n: int = 3000) -> str:
        """The provider's output since the current example began (its last ``n`` bytes)."""
        try:
            new = self.log_path.read_bytes()[self._log_mark:]
        except OSError:
            return ""
        return new[-n:].decode(errors="replace")

    def __repr__(self) -> str:
        return f"ProviderLink({self.url}, provider starts: {self.starts})"

    # one example

    def probe(self, *frames: str | bytes) -> Probe:
        """Send ``frames``, then a signed ping; return what came back before the ping's
        reply, which must be a verified result. Fails when the socket or the process died."""
        for frame in frames:
            assert len(frame) < MAX_FRAME_BYTES, "the fuzzer must stay under the size limit"
        self._log_mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self.ensure()
            replies, pong, ping = self.runner.run(self._send_and_ping(frames),
                                                  timeout=REPLY_TIMEOUT_S + 5)
        except (LinkLost, TimeoutError, ConnectionError, aiohttp.ClientError) as exc:
            message = self._post_mortem(exc, frames)
            self.runner.run(self._disconnect(), timeout=10)  # the next example starts afresh
            raise AssertionError(message) from None
        assert_verified_pong(pong, ping)
        for reply in replies:
            self.check_reply(reply)
        return Probe(replies)

    async def _send_and_ping(self, frames: tuple[str | bytes, ...]
                             ) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        ws = self.ws
        assert ws is not None
        for frame in frames:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
        rid = f"fuzz-ping-{next(self._ids)}"
        ping = CONSUMER.sign_frame(request_frame(rid, PING, {"nonce": new_nonce()},
                                                 CONSUMER.address))
        await ws.send_str(encode_frame(ping))
        replies: list[Any] = []
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise LinkLost(f"{msg.type.name}, close code {ws.close_code}, "
                                   f"data {msg.data!r}")
                try:
                    reply = json.loads(msg.data)
                except ValueError:
                    raise AssertionError(f"reply is not JSON: {msg.data[:300]!r}") from None
                if isinstance(reply, dict) and reply.get("id") == rid:
                    return replies, reply, ping
                replies.append(reply)

    def _post_mortem(self, exc: BaseException, frames: tuple[str | bytes, ...]) -> str:
        proc = self.proc
        returncode = None
        if proc is not None:
            try:
                returncode = proc.popen.wait(3)
            except subprocess.TimeoutExpired:
                returncode = None
        if returncode is not None:
            what = f"the provider PROCESS DIED ({signal_name(returncode)})"
        else:
            what = "the provider (still running) dropped the socket"
        sent = "\n".join(f"  {f[:400]!r}{' …' if len(f) > 400 else ''} ({len(f)} chars)"
                         for f in frames)
        return (f"{what}; the ping got no answer ({type(exc).__name__}: {exc}).\n"
                f"--- frames sent ---\n{sent}\n"
                f"--- provider output meanwhile ---\n{self.log_tail()}")

    def check_reply(self, reply: Any) -> None:
        """Every frame the provider sends: a JSON object, signed by it unless a chunk, with a
        known error code; and no request nonce is ever answered by two results."""
        assert isinstance(reply, dict), f"reply is not a JSON object: {reply!r:.300}"
        if "chunk" in reply:
            return
        assert recover_frame_signer(reply) == PROVIDER.address, f"unsigned reply {reply!r:.300}"
        if "error" in reply:
            error = reply["error"]
            assert isinstance(error, dict), reply
            assert error.get("code") in ERROR_CODES, f"unknown error code in {reply!r:.300}"
            assert isinstance(error.get("message"), str), reply
        elif "result" in reply:
            re = reply.get("re")
            if isinstance(re, str) and is_random_nonce(re):  # one of ours, never reused
                self.results_per_nonce[re] += 1
                assert self.results_per_nonce[re] == 1, f"nonce {re} executed twice"


def is_random_nonce(value: Any) -> bool:
    return (isinstance(value, str) and len(value) == 34 and value.startswith("0x")
            and all(c in string.hexdigits for c in value[2:]))


def assert_verified_pong(pong: dict[str, Any], ping: dict[str, Any]) -> None:
    """What ``RpcClient._verify_final`` demands of a ping's answer."""
    assert recover_frame_signer(pong) == PROVIDER.address, pong
    assert pong.get("re") == ping["nonce"], pong
    assert "error" not in pong, f"the ping failed: {pong}"
    result = pong.get("result")
    assert isinstance(result, dict), pong
    assert result.get("protocol") == PROTOCOL, pong
    assert result.get("nonce") == ping["params"]["nonce"], pong


@pytest.fixture(scope="module")
def link(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[ProviderLink]:
    peer = ProviderLink(loop_thread, tmp_path_factory.mktemp("fuzz-provider") / "output.log")
    try:
        peer.ensure()
        yield peer
    finally:
        peer.close()


def errors_of(probe: Probe) -> list[str]:
    return [r["error"]["code"] for r in probe.replies if "error" in r]


# strategies: JSON values and text

SAFE_INT = 2**53 - 1
utf8_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
"""Any Unicode but lone surrogates (which cannot travel in a WebSocket text frame)."""
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-SAFE_INT, SAFE_INT),
    st.integers(-(10**80), 10**80),  # huge: beyond 64 bits and beyond canonical's 2**53
    st.sampled_from([0, -1, SAFE_INT, SAFE_INT + 1, 2**63, 2**64, -(2**63) - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    utf8_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(utf8_text, inner, max_size=5),
    max_leaves=25,
)
json_objects = st.dictionaries(utf8_text, json_values, max_size=6)
near_json = st.text(alphabet='{}[]":,\\ 0123456789-+.eEtrufalsnI\tidmethod', max_size=300)
raw_numbers = st.one_of(
    st.integers(1, 6000).map(lambda k: "9" * k),  # past int()'s 4300-digit limit
    st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "-0", "0.0", "1E+2", "01", ".5"]),
)


def bomb(kind: str, n: int, closed: bool = True) -> str:
    """Nesting ``n`` deep: ``[[[…]]]``, ``{"a":{"a":…1}}`` or alternating ``{"a":[…]}``."""
    opener, leaf, closer = {"list": ("[", "", "]"), "dict": ('{"a":', "1", "}"),
                            "mixed": ('{"a":[', "1", "]}")}[kind]
    return opener * n + leaf + (closer * n if closed else "")


bombs = st.builds(bomb, st.sampled_from(["list", "dict", "mixed"]),
                  st.integers(0, 100_000) | st.integers(1000, 1100), st.booleans())


# (a) and (b): junk that is not a frame at all


@settings(max_examples=300, deadline=None, suppress_health_check=SUPPRESS)
@given(junk=st.one_of(st.text(alphabet=st.characters(codec="utf-8"), max_size=2000),
                      near_json, st.binary(max_size=2000)))
def test_arbitrary_text_or_binary_frames_never_cost_the_socket(link: ProviderLink,
                                                               junk: str | bytes):
    probe = link.probe(junk)
    if isinstance(junk, bytes):
        assert errors_of(probe) == [ErrorCode.BAD_REQUEST], probe.replies


@settings(max_examples=300, deadline=None, suppress_health_check=SUPPRESS)
@given(value=json_values)
def test_arbitrary_json_values_never_cost_the_socket(link: ProviderLink, value: Any):
    probe = link.probe(json.dumps(value))
    if not isinstance(value, dict):
        assert errors_of(probe) == [ErrorCode.BAD_REQUEST], probe.replies
    elif "id" not in value:
        assert probe.replies == [], "an id-less frame is never answered"
    else:
        assert len(probe.replies) == 1 and "error" in probe.replies[0], probe.replies


# (c) nesting bombs


@settings(max_examples=80, deadline=None, suppress_health_check=SUPPRESS)
@example(text="[" * 70_000 + "]" * 70_000)  # the frame that killed the provider
@example(text='{"a":' * 100_000 + "1" + "}" * 100_000)
@given(text=bombs)
def test_a_nesting_bomb_is_a_bad_request_and_the_provider_lives(link: ProviderLink, text: str):
    probe = link.probe(text)
    codes = errors_of(probe)
    assert set(codes) <= {ErrorCode.BAD_REQUEST}, probe.replies
    if text.startswith("[") or not text.endswith("}"):
        assert codes == [ErrorCode.BAD_REQUEST], "not a JSON object: answered BAD_REQUEST"


@settings(max_examples=80, deadline=None, suppress_health_check=SUPPRESS)
@example(inner="[" * 70_000 + "]" * 70_000, where="params")
@given(inner=bombs, where=st.sampled_from(["id", "method", "params", "from", "timestamp",
                                           "nonce", "signature", "extra"]))
def test_a_bomb_inside_a_plausible_request_is_a_bad_request(link: ProviderLink, inner: str,
                                                            where: str):
    fields = {"id": "1", "method": json.dumps(PING), "params": "{}",
              "from": json.dumps(CONSUMER.address), "timestamp": str(int(time.time())),
              "nonce": json.dumps(new_nonce()), "signature": json.dumps("0x" + "00" * 65)}
    fields[where] = inner if where != "params" else '{"x":' + inner + "}"
    text = "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"
    probe = link.probe(text)
    assert len(probe.replies) == 1, "a frame with an id is answered once"
    refusals = [[ErrorCode.BAD_REQUEST], [ErrorCode.BAD_SIGNATURE]]
    if where == "timestamp":  # a depth-0 "bomb" is a plain number: an ancient timestamp
        refusals.append([ErrorCode.STALE_MESSAGE])
    assert errors_of(probe) in refusals, probe.replies


# (d) signed frames, mutated


def is_request_id(value: Any) -> bool:
    """The spec (docs/mor-rpc.md): integer 0…2⁵³−1 or a string of 1–128 characters."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value <= SAFE_INT
    return isinstance(value, str) and 0 < len(value) <= 128


def passes_authentication(frame: dict[str, Any], signer: Signer, signature_ok: bool) -> bool:
    """The receiver's checks as docs/mor-rpc.md states them: shape, freshness, signature
    and claimed sender (replay aside: a junk nonce may repeat across examples)."""
    ts = frame.get("timestamp")
    nonce = frame.get("nonce")
    return ((("id" not in frame) or is_request_id(frame["id"]))
            and isinstance(frame.get("method"), str)
            and isinstance(frame.get("params"), dict)
            and isinstance(frame.get("from"), str)
            and frame["from"].lower() == signer.address.lower()
            and isinstance(ts, int) and not isinstance(ts, bool)
            and abs(time.time() - ts) <= 60 - 10
            and isinstance(nonce, str) and 0 < len(nonce) <= 66
            and signature_ok)


METHODS = [PING, "test.echo", "test.crash", "test.float", "test.no_key", CREDIT, CANCEL,
           "session.prompt", "provider.capabilities"]
junk_for = {
    "id": st.one_of(json_values, st.integers(), st.text(min_size=100, max_size=200),
                    st.sampled_from([-1, SAFE_INT + 1, "", True, 1.0, None, [1], {"a": 1}])),
    "method": st.one_of(json_values, st.sampled_from(METHODS), utf8_text),
    "params": st.one_of(json_values, json_objects),
    "from": st.one_of(json_values, st.sampled_from([STRANGER.address, PROVIDER.address,
                                                    CONSUMER.address.lower(), "0x", ""])),
    "timestamp": st.one_of(
        json_values,
        st.integers(STALE_S, 10**9).flatmap(lambda d: st.sampled_from([d, -d])).map(
            lambda d: int(time.time()) + d),
        st.sampled_from([0, -1, 2**63, True, "1700000000", 1.5e9])),
    "nonce": st.one_of(json_values, st.text(min_size=60, max_size=80),
                       st.sampled_from(["", "0x", "zz", 0, None])),
    "signature": st.one_of(json_values, st.text(alphabet="0123456789abcdefABCDEFx",
                                                min_size=130, max_size=134),
                           st.sampled_from(["", "0x", "0x" + "00" * 65, "0x" + "ff" * 65])),
}
FIELDS = list(junk_for)


@st.composite
def notification_params(draw: st.DrawFn) -> dict[str, Any]:
    """``rpc.credit {id, n}`` / ``rpc.cancel {id}`` with junk where the numbers go."""
    params: dict[str, Any] = {"id": draw(junk_for["id"])}
    if draw(st.booleans()):
        params["n"] = draw(st.one_of(json_values, st.integers()))
    return params


@dataclass
class Mutation:
    where: str  # "before" the signature (re-signed) or "after" it (tampering)
    kind: str  # "set", "delete", "flip"
    name: str
    value: Any = None


mutations = st.one_of(
    st.builds(Mutation, st.sampled_from(["before", "after"]), st.just("set"),
              st.sampled_from(FIELDS)).flatmap(
        lambda m: junk_for[m.name].map(lambda v: Mutation(m.where, m.kind, m.name, v))),
    st.builds(Mutation, st.sampled_from(["before", "after"]), st.just("delete"),
              st.sampled_from(FIELDS)),
    st.builds(Mutation, st.just("after"), st.just("flip"), st.just("signature"),
              st.tuples(st.integers(0, 64), st.integers(1, 255))),
)


@st.composite
def signed_frames(draw: st.DrawFn) -> tuple[dict[str, Any], Signer, bool, bool]:
    """(frame, signer, signature still matches, sent twice)."""
    signer = draw(st.sampled_from([CONSUMER, STRANGER]))
    method = draw(st.sampled_from(METHODS))
    notification = method in (CREDIT, CANCEL) and draw(st.booleans())
    params = draw(notification_params() if method in (CREDIT, CANCEL) else json_objects)
    frame: dict[str, Any] = {"id": draw(st.integers(0, SAFE_INT) | st.text(min_size=1,
                                                                          max_size=128)),
                             "method": method, "params": params, "from": signer.address,
                             "timestamp": int(time.time()) + draw(st.integers(-20, 20)),
                             "nonce": new_nonce()}
    if notification:
        del frame["id"]
    changes = draw(st.lists(mutations, max_size=3))
    for m in changes:
        if m.where == "before" and m.name != "signature":
            if m.kind == "set":
                frame[m.name] = m.value
            else:
                frame.pop(m.name, None)
    try:
        frame = signer.sign_frame(frame)
        signature_ok = True
    except ValueError:  # not canonical (a float, a huge int...): it cannot be signed
        frame["signature"] = "0x" + os.urandom(65).hex()
        signature_ok = False
    signed = json.dumps(frame, sort_keys=True)
    for m in changes:
        # a signature set "before" signing is a tampered one too
        if m.where != "after" and m.name != "signature":
            continue
        if m.kind == "set":
            frame[m.name] = m.value
        elif m.kind == "delete":
            frame.pop(m.name, None)
        elif isinstance(frame.get("signature"), str) and len(frame["signature"]) == 132:
            index, mask = m.value
            raw = bytearray.fromhex(frame["signature"][2:])
            raw[index] ^= mask
            frame["signature"] = "0x" + raw.hex()
    if json.dumps(frame, sort_keys=True) != signed:
        signature_ok = False  # any change after signing must be caught by the signature
    return frame, signer, signature_ok, draw(st.booleans())


@settings(max_examples=500, deadline=None, suppress_health_check=SUPPRESS)
@given(case=signed_frames())
def test_mutated_signed_frames_are_refused_cleanly_and_never_executed(
        link: ProviderLink, case: tuple[dict[str, Any], Signer, bool, bool]):
    frame, signer, signature_ok, twice = case
    text = json.dumps(frame)
    probe = link.probe(*([text, text] if twice else [text]))
    accepted = passes_authentication(frame, signer, signature_ok)
    event("passes authentication" if accepted else "refused")
    nonce = frame.get("nonce")
    mine = [r for r in probe.replies if r.get("re") == (nonce if isinstance(nonce, str)
                                                         else None)]
    if "id" not in frame:
        assert probe.replies == [], "a notification is never answered"
        return
    assert len(mine) == (2 if twice else 1), probe.replies
    codes = [r["error"]["code"] for r in mine if "error" in r]
    event(f"answered {sorted(set(codes)) or 'result'}")
    if not accepted:
        assert all("result" not in r for r in mine), f"a refused frame was executed: {mine}"
        assert set(codes) <= {ErrorCode.BAD_REQUEST, ErrorCode.BAD_SIGNATURE,
                              ErrorCode.STALE_MESSAGE, ErrorCode.REPLAYED_MESSAGE}, mine
        return
    assert not set(codes) & {ErrorCode.BAD_SIGNATURE, ErrorCode.STALE_MESSAGE}, (
        f"a correctly signed, fresh frame was refused: {mine}")
    if twice and is_random_nonce(nonce):
        assert codes.count(ErrorCode.REPLAYED_MESSAGE) == 1, f"replay not refused: {mine}"


@settings(max_examples=150, deadline=None, suppress_health_check=SUPPRESS)
@given(method=st.sampled_from([CREDIT, CANCEL]), params=st.one_of(notification_params(),
                                                                   json_objects))
def test_signed_credit_and_cancel_with_junk_params_are_ignored(link: ProviderLink, method: str,
                                                               params: dict[str, Any]):
    try:
        frame = CONSUMER.sign_frame({"method": method, "params": params,
                                     "from": CONSUMER.address})
    except ValueError:  # not canonical: unsignable, covered by the mutation test
        return
    probe = link.probe(json.dumps(frame))
    assert probe.replies == [], "a notification is never answered"


# -- 2. the consumer's HTTP API ----------------------------------------------------------------

MODEL = "fuzz-model"
MODEL_ID = "0x" + "cd" * 32
ALLOWED_5XX = {(503, "no_bids")}
"""The only 5xx these fakes make on purpose: ``FakeSessions.open_for_model`` finds no bid."""


class FuzzIndex(FakeIndex):
    """Knows one model, so valid bodies get past ``resolve_model`` into the chat path."""

    def find_model(self, name: str) -> Model | None:
        if name in (MODEL, MODEL_ID):
            return Model(id=MODEL_ID, name=MODEL, created_at=1)
        return None


class FuzzSessions(FakeSessions):
    """``FakeSessions`` plus what ``ChatService`` reads: no open session, and opening one
    finds no bid (503 ``no_bids``, as the real ``SessionManager`` does without bids)."""

    def __init__(self) -> None:
        super().__init__()
        self.index = FuzzIndex()
        self.sessions: dict[str, Any] = {}

    async def session_for_model(self, model_id: str, duration: int,
                                exclude: set[str] = frozenset()  # type: ignore[assignment]
                                ) -> Any:
        return await self.open_for_model(model_id, duration)


@dataclass
class ConsumerLink:
    runner: LoopThread
    client: TestClient[Any, Any]
    token: str

    def __repr__(self) -> str:
        return "ConsumerLink()"

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        async def go() -> tuple[int, str, bytes]:
            async with self.client.post(path, data=body, headers={
                    "Authorization": f"Bearer {self.token}", **headers}) as resp:
                return resp.status, resp.content_type, await resp.read()
        return self.runner.run(go(), timeout=30)


@pytest.fixture(scope="module")
def consumer_api(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ConsumerLink]:
    storage = tmp_path_factory.mktemp("fuzz-consumer")

    async def start() -> TestClient[Any, Any]:
        sessions = FuzzSessions()
        metrics = Metrics("consumer")
        chat = ChatService(cast(Any, sessions), cast(Any, sessions.index), session_duration=600,
                           failover=True, first_token_timeout=5, metrics=metrics)
        api = ConsumerApi(cast(Any, sessions), chat, metrics=metrics,
                          access=AccessPolicy.from_settings(consumer_settings(storage)))
        client = TestClient(TestServer(api.app(), host="127.0.0.1"))
        await client.start_server()
        return client

    client = loop_thread.run(start())
    try:
        yield ConsumerLink(loop_thread, client, token_path(storage).read_text().strip())
    finally:
        loop_thread.run(client.close())


def assert_openai_error(sent: str, status: int, content_type: str, body: bytes) -> None:
    """``sent`` describes the request, for the failure message."""
    assert status >= 400, f"no body here can succeed, got {status}: {body[:300]!r}\n{sent}"
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"{status} body is not an OpenAI error: {body[:300]!r}\n{sent}"
                             ) from None
    assert content_type == "application/json", (content_type, sent)
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, (
        error, sent)
    assert isinstance(error["code"], str) and isinstance(error["message"], str), (error, sent)
    assert isinstance(error["type"], str), (error, sent)
    assert error["param"] is None or isinstance(error["param"], str), (error, sent)
    event(f"{status} {error['code']}")
    if status >= 500:
        assert (status, error["code"]) in ALLOWED_5XX, f"server error {status}: {error}\n{sent}"


def described(path: str, headers: dict[str, str], body: bytes) -> str:
    more = " …" if len(body) > 400 else ""
    return f"POST {path} {headers} ({len(body)} bytes) {body[:400]!r}{more}"


def object_text(fields: dict[str, str]) -> str:
    """A JSON object from raw value texts (so numbers past 4300 digits and bombs fit)."""
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"


raw_values = st.one_of(json_values.map(json.dumps), raw_numbers,
                       st.builds(bomb, st.sampled_from(["list", "dict", "mixed"]),
                                 st.integers(0, 3000)),
                       st.sampled_from(['"1"', "true", "null", "[]", "{}", "-1", "0", "3",
                                        "2.5", '"yes"', '""']))
good_message = {"role": "user", "content": "hi"}
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id"]
CHAT_FIELDS = ["model", "messages", "stream", "stream_options", "max_tokens",
               "max_completion_tokens", "temperature", "n", "top_p", "stop", "seed", "user",
               "tools", "tool_choice", "response_format", "logprobs", "presence_penalty"]


@st.composite
def chat_bodies(draw: st.DrawFn) -> str:
    """A valid chat request with wrong types, junk or bombs in some fields."""
    message = {k: json.dumps(v) for k, v in good_message.items()}
    for name in draw(st.lists(st.sampled_from(MESSAGE_FIELDS), max_size=2)):
        if draw(st.booleans()):
            message[name] = draw(raw_values)
        else:
            message.pop(name, None)
    fields = {"model": json.dumps(MODEL), "messages": "[" + object_text(message) + "]"}
    for name in draw(st.lists(st.sampled_from(CHAT_FIELDS), max_size=3)):
        if draw(st.integers(0, 4)):
            fields[name] = draw(raw_values)
        else:
            fields.pop(name, None)
    return object_text(fields)


MB_DEEP = {"list": 500_000, "dict": 170_000, "mixed": 140_000}  # about 1 MB each
big_bombs = st.sampled_from(list(MB_DEEP)).flatmap(lambda kind: st.builds(
    bomb, st.just(kind), st.integers(0, MB_DEEP[kind]) | st.just(MB_DEEP[kind]),
    st.booleans()))
http_bodies = st.one_of(
    st.binary(max_size=3000),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_json.map(str.encode),
    chat_bodies().map(str.encode),
    big_bombs.map(str.encode),
)
content_types = st.sampled_from([None, "application/json", "text/plain",
                                 "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x"])
header_text = st.text(alphabet=string.ascii_letters + string.digits + " -_.:/x", max_size=70)
session_headers = st.one_of(st.none(), header_text,
                            st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))


@settings(max_examples=250, deadline=None, suppress_health_check=SUPPRESS)
@example(body=("[" * 500_000 + "]" * 500_000).encode(), content_type="application/json",
         session=None)
@given(body=http_bodies, content_type=content_types, session=session_headers)
def test_chat_completions_answers_any_body_with_an_openai_error_never_a_5xx(
        consumer_api: ConsumerLink, body: bytes, content_type: str | None,
        session: str | None):
    headers = {} if content_type is None else {"Content-Type": content_type}
    if session is not None:
        headers["session_id"] = session
    path = "/v1/chat/completions"
    assert_openai_error(described(path, headers, body), *consumer_api.post(path, body, headers))


session_bodies = st.one_of(
    st.just(b""), st.binary(max_size=500), json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["sessionDuration", "bidId", "x"]), raw_values,
                    max_size=3).map(lambda d: object_text(d).encode()),
    big_bombs.map(str.encode),
)


@settings(max_examples=120, deadline=None, suppress_health_check=SUPPRESS)
@given(model=st.one_of(st.just(MODEL), st.just(MODEL_ID), st.text(min_size=1, max_size=40)),
       body=session_bodies, content_type=content_types)
def test_opening_a_session_answers_any_body_with_an_openai_error_never_a_5xx(
        consumer_api: ConsumerLink, model: str, body: bytes, content_type: str | None):
    headers = {} if content_type is None else {"Content-Type": content_type}
    path = f"/blockchain/models/{quote(model, safe='')}/session"
    assert_openai_error(described(path, headers, body), *consumer_api.post(path, body, headers))


# -- 3. the consumer reading a hostile provider ------------------------------------------------

chunk_parts = st.one_of(
    st.text(alphabet="0123456789", max_size=30), st.text(max_size=20), raw_numbers,
    st.sampled_from(["", "-1", "1.5", "٣", "1_000", " 1", "0x1f"]),
)
chunk_like = st.builds(lambda rid, seq, chunk: f'{{"id":{rid},"seq":{seq},"chunk":"{chunk}"}}',
                       chunk_parts, chunk_parts, st.text(max_size=40))
hostile_text = st.one_of(
    st.text(max_size=500),  # lone surrogates included: a str need not be valid UTF-8 here
    near_json, chunk_like,
    json_values.map(json.dumps),
    st.builds(bomb, st.sampled_from(["list", "dict", "mixed"]), st.integers(0, 2000),
              st.booleans()),  # shallow enough for the old parser, deeper than 1024
)


@settings(max_examples=500, deadline=None, suppress_health_check=SUPPRESS)
@example(text='{"id":' + "1" * 5000 + ',"seq":0,"chunk":""}')
@given(text=hostile_text)
def test_the_consumer_reads_any_provider_frame_as_a_dict_or_an_rpc_error(text: str):
    try:
        chunk = _chunk_frame(text)  # the per-token fast path: a dict or None, nothing else
    except Exception as exc:
        raise AssertionError(f"_chunk_frame raised {exc!r:.200} on {text[:300]!r}") from exc
    assert chunk is None or (isinstance(chunk, dict) and isinstance(chunk["id"], int)
                             and isinstance(chunk["seq"], int)
                             and isinstance(chunk["chunk"], str))
    try:
        frame = decode_frame(text)
    except RpcError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.PAYLOAD_TOO_LARGE), exc
    else:
        assert isinstance(frame, dict)
    try:
        decode_frame(text.encode("utf-8", "surrogatepass"))
    except RpcError:
        pass


BOMB_SCRIPT = """
import sys
import eth_account  # noqa: F401  (imports py_ecc, which raises the recursion limit)
from proxy_router.morrpc.client import _chunk_frame
from proxy_router.morrpc.errors import RpcError
from proxy_router.morrpc.protocol import decode_frame

n = int(sys.argv[1])
for text in ("[" * n + "]" * n, '{"a":' * n + "1" + "}" * n, "[" * n,
             '{"id":1,"seq":0,"params":' + "[" * n + "]" * n + "}"):
    try:
        frame = _chunk_frame(text) or decode_frame(text)
    except RpcError:
        continue
    raise SystemExit(f"a {n}-deep bomb was accepted as {type(frame).__name__}")
print("ok")
"""


@pytest.mark.parametrize("depth", [70_000, 1_000_000])
def test_a_deep_bomb_cannot_crash_the_consumers_frame_reader(depth: int):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(depth)], env=env,
                          capture_output=True, timeout=120, check=False, cwd=REPO_ROOT)
    assert done.returncode != -signal.SIGSEGV, "the interpreter died of SIGSEGV"
    assert done.returncode == 0, (signal_name(done.returncode), done.stderr[-2000:])
    assert done.stdout.strip() == b"ok"

