"""The raw-TCP transport on loopback: splitting, streams ending in EOF, hostile peers."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_router.morrpc.errors import ErrorCode, RpcError, RpcTimeout, RpcUnavailable
from proxy_router.morrpc.lumerin import (
    PING,
    SESSION_PROMPT,
    SESSION_REQUEST,
    JsonObjectSplitter,
    LumerinLimits,
    LumerinServer,
    PongRes,
    Request,
    Response,
    SessionPromptRes,
    SessionRes,
    check_pong,
    check_session_request,
    check_session_response,
    handle_lumerin_connection,
    looks_like_lumerin,
    lumerin_call,
    ping_request,
    pong_response,
    prompt_chunk_response,
    prompt_chunks,
    prompt_done_response,
    prompt_request,
    session_request,
    session_response,
)
from proxy_router.morrpc.signing import Signer

PROVIDER = Signer.from_key("0x" + "a1" * 32)
USER = Signer.from_key("0x" + "b2" * 32)
SESSION = "0x" + "5e" * 32
CHAIN = 31337


# -- the splitter -------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(alphabet=st.sampled_from(
        list('ab{}[]"\\\n:, é😀'))),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=20)
objects = st.dictionaries(st.text(max_size=6), json_values, max_size=5)


@settings(max_examples=200, deadline=None)
@given(st.lists(objects, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_any_split_of_back_to_back_objects_gives_them_back(items: list[dict[str, Any]],
                                                           rng: random.Random) -> None:
    blob = b"".join(json.dumps(o, ensure_ascii=rng.random() < 0.5).encode()
                    + rng.choice([b"", b" ", b"\n", b"\r\n\t "]) for o in items)
    splitter = JsonObjectSplitter(1 << 20)
    got: list[bytes] = []
    pos = 0
    while pos < len(blob):
        step = rng.randint(1, 7)
        got += splitter.feed(blob[pos:pos + step])
        pos += step
    assert [json.loads(g) for g in got] == items
    assert not splitter.pending


def test_an_escaped_quote_split_across_reads() -> None:
    splitter = JsonObjectSplitter(1024)
    text = b'{"a":"x\\"}{\\\\","b":"}"}{"c":1}'
    assert [o for i in range(len(text)) for o in splitter.feed(text[i:i + 1])] == \
        [b'{"a":"x\\"}{\\\\","b":"}"}', b'{"c":1}']


@pytest.mark.parametrize("data", [b"[1]", b"GET / HTTP/1.1\r\n", b"  x", b'"str"', b"{}]"])
def test_anything_but_objects_is_refused(data: bytes) -> None:
    with pytest.raises(RpcError) as err:
        JsonObjectSplitter(1024).feed(data)
    assert err.value.code == ErrorCode.BAD_REQUEST


def test_an_object_past_the_cap_is_refused_before_it_ends() -> None:
    splitter = JsonObjectSplitter(100)
    splitter.feed(b'{"a":"' + b"x" * 90)
    with pytest.raises(RpcError) as err:
        splitter.feed(b"x" * 20)
    assert err.value.code == ErrorCode.PAYLOAD_TOO_LARGE


def test_deep_nesting_is_refused_without_recursion() -> None:
    with pytest.raises(RpcError) as err:
        JsonObjectSplitter(1 << 20, max_depth=64).feed(b"{" + b'"a":[' * 100_000)
    assert err.value.code == ErrorCode.BAD_REQUEST


def test_sniffing() -> None:
    assert looks_like_lumerin(b"{") and looks_like_lumerin(b' \n{"id"')
    assert not looks_like_lumerin(b"GET /mor-rpc HTTP/1.1") and not looks_like_lumerin(b"")


# -- a provider on loopback ----------------------------------------------------------------------
async def provider_handler(request: Request[Any]) -> AsyncIterator[Response[Any]]:
    """A tiny provider: ping, session.request, a streamed prompt, failures on demand."""
    if request.method == PING:
        yield pong_response(request, PROVIDER, "test")
    elif request.method == SESSION_REQUEST:
        check_session_request(request.params)
        yield session_response(request, PROVIDER, chain_id=CHAIN)
    elif request.method == SESSION_PROMPT:
        request.params.verify(USER.public_key)
        body = json.loads(request.params.message)
        for word in body["words"]:
            if word == "!fail":
                raise RpcError(ErrorCode.BACKEND_UNAVAILABLE, "model server down")
            if word == "!crash":
                raise ValueError("bug")
            yield prompt_chunk_response(request.id, PROVIDER, user_public_key=USER.public_key,
                                        plaintext=json.dumps({"content": word}).encode())
            await asyncio.sleep(0)
        yield prompt_done_response(request.id, PROVIDER, user_public_key=USER.public_key)
    else:
        raise RpcError(ErrorCode.UNKNOWN_METHOD, f"no handler for {request.method}")


@pytest.fixture
async def server() -> AsyncIterator[LumerinServer]:
    async with LumerinServer(provider_handler, request_timeout=0.5,
                             limits=LumerinLimits(max_request_bytes=64 * 1024)) as srv:
        yield srv


async def call(port: int, request: Request[Any], result_type: type[Any],
               **kw: Any) -> list[Response[Any]]:
    async with aclosing(lumerin_call("127.0.0.1", port, request, result_type, timeout=5,
                                     **kw)) as responses:
        return [r async for r in responses]


async def test_ping_over_tcp(server: LumerinServer) -> None:
    ping = ping_request(USER)
    [pong] = await call(server.port, ping, PongRes)
    assert check_pong(pong, provider=PROVIDER.address, nonce=ping.params.nonce).version == "test"


async def test_a_whole_session_over_tcp(server: LumerinServer) -> None:
    bid = "0x" + "42" * 32
    [res] = await call(server.port, session_request(USER, bid_id=bid, spend=5), SessionRes)
    opened = check_session_response(res, provider=PROVIDER.address, user=USER.address,
                                    bid_id=bid, chain_id=CHAIN)
    body = json.dumps({"words": ["Hello", ",", " world"]})
    responses = lumerin_call("127.0.0.1", server.port,
                             prompt_request(USER, session_id=SESSION, body=body),
                             SessionPromptRes, timeout=5)
    async with aclosing(responses):
        got = [json.loads(c)["content"] async for c in prompt_chunks(
            responses, user_key=USER, provider_public_key=opened.provider_public_key)]
    assert got == ["Hello", ",", " world"]


async def test_the_stream_ends_with_eof_after_done(server: LumerinServer) -> None:
    body = json.dumps({"words": ["a", "b"]})
    got = await call(server.port, prompt_request(USER, session_id=SESSION, body=body),
                     SessionPromptRes)
    assert len(got) == 3  # two chunks and "[DONE]", then the provider closed


@pytest.mark.parametrize(("word", "code"), [("!fail", ErrorCode.BACKEND_UNAVAILABLE),
                                            ("!crash", ErrorCode.INTERNAL)])
async def test_a_failure_mid_stream_is_one_unsigned_error_then_eof(server: LumerinServer,
                                                                   word: str,
                                                                   code: ErrorCode) -> None:
    body = json.dumps({"words": ["a", word, "never"]})
    got = await call(server.port, prompt_request(USER, session_id=SESSION, body=body),
                     SessionPromptRes)
    assert [r.error is None for r in got] == [True, False]
    error = got[1].error
    assert error is not None and not error.is_signed and error.code == 400
    with pytest.raises(RpcError) as err:
        got[1].unwrap()
    assert err.value.code == code


async def test_an_unknown_method_gets_the_reference_error(server: LumerinServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b'{"id":"77","method":"session.nope","params":{}}')
    data = await asyncio.wait_for(reader.read(), 5)  # read to EOF
    writer.close()
    obj = orjson.loads(data)
    assert obj["id"] == "77" and obj["result"] is None
    assert obj["error"]["message"] == "unknown method: unknown method: session.nope"
    assert obj["error"]["code"] == 400 and obj["error"]["data"]["signature"] == "0x00"


async def raw_exchange(port: int, payload: bytes, *, close_write: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    if close_write:
        writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"{garbage", b'{"id":"1"', b"\xff\xfe{}", b"{}" * 3,
    b'{"id":"1","method":"network.ping","params":' + b"[" * 200 + b"]" * 200 + b"}",
    b'{"id":"1","method":"network.ping","params":{"nonce":"' + b"00" * 40_000 + b'"}}',
])
async def test_hostile_input_is_refused_and_the_server_survives(server: LumerinServer,
                                                                payload: bytes) -> None:
    answer = await raw_exchange(server.port, payload)
    if answer:  # a parseable request with bad params: one error, never a crash
        assert orjson.loads(answer)["error"]["code"] == 400
    ping = ping_request(USER)
    assert len(await call(server.port, ping, PongRes)) == 1


async def test_a_stalled_request_is_dropped(server: LumerinServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b'{"id":"1",')
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after request_timeout
    writer.close()


async def test_a_request_dribbled_byte_by_byte_is_served(server: LumerinServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for byte in ping_request(USER).encode():
        writer.write(bytes((byte,)))
        await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert orjson.loads(answer)["result"]["version"] == "test"


async def test_a_shared_port_hands_over_the_sniffed_bytes() -> None:
    """The provider's listener reads the first byte itself, then delegates."""
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(1)
        if looks_like_lumerin(first):
            await handle_lumerin_connection(reader, writer, provider_handler, first)
        else:
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            writer.close()

    srv = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        assert len(await call(port, ping_request(USER), PongRes)) == 1
        assert (await raw_exchange(port, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")
    finally:
        srv.close()
        await srv.wait_closed()


# -- a hostile provider, seen from the consumer -------------------------------------------------
@asynccontextmanager
async def fake_provider(script: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                         Awaitable[None]]) -> AsyncIterator[int]:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(65536)
            await script(reader, writer)
        finally:
            writer.close()

    srv = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        await srv.wait_closed()


def pong_bytes(rid: str = "0") -> bytes:
    req = ping_request(USER, request_id=rid)
    return pong_response(req, PROVIDER).encode()


@pytest.mark.parametrize(("script", "exc", "kw"), [
    (lambda w: w.write(b'{"id":"0","result":{"nonce":"0x01",'), RpcUnavailable, {}),
    (lambda w: w.write(pong_bytes("other")), RpcError, {}),
    (lambda w: w.write(b"<html>"), RpcError, {}),
    (lambda w: w.write(b'{"id":"0","result":{"x":"' + b"a" * 5000 + b'"}}'), RpcError,
     {"limits": LumerinLimits(max_response_bytes=1000)}),
    (lambda w: w.write(pong_bytes() * 5), RpcError,
     {"limits": LumerinLimits(max_stream_objects=3)}),
    (lambda w: w.write(b'{"id":"0","result":null}'), RpcError, {}),
])
async def test_a_hostile_provider_is_refused(script: Callable[[asyncio.StreamWriter], None],
                                             exc: type[Exception], kw: dict[str, Any]) -> None:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script(writer)
        await writer.drain()

    async with fake_provider(run) as port:
        with pytest.raises(exc):
            await call(port, ping_request(USER), PongRes, **kw)


async def test_a_silent_provider_times_out() -> None:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3)

    async with fake_provider(run) as port:
        with pytest.raises(RpcTimeout):
            async with aclosing(lumerin_call("127.0.0.1", port, ping_request(USER), PongRes,
                                             timeout=0.3)) as responses:
                _ = [r async for r in responses]


async def test_the_total_timeout_bounds_a_trickling_stream() -> None:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(50):
            writer.write(pong_bytes())
            await writer.drain()
            await asyncio.sleep(0.05)

    async with fake_provider(run) as port:
        with pytest.raises(RpcTimeout):
            await call(port, ping_request(USER), PongRes, total_timeout=0.4)


async def test_an_unreachable_provider_is_unavailable() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    with pytest.raises(RpcUnavailable):
        await call(port, ping_request(USER), PongRes)


async def test_a_go_style_raw_client_reads_back_to_back_objects(server: LumerinServer) -> None:
    """What the Go consumer sees: no separators between response objects, then EOF."""
    body = json.dumps({"words": ["x", "y"]})
    data = await raw_exchange(server.port,
                              prompt_request(USER, session_id=SESSION, body=body).encode(),
                              close_write=False)
    assert data.count(b'}{"id"') == 2 and b"\n" not in data
    objs = JsonObjectSplitter(1 << 20).feed(data)
    assert [orjson.loads(o)["id"] for o in objs] == [orjson.loads(objs[0])["id"]] * 3


async def test_the_first_object_may_take_longer_than_the_gaps() -> None:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)  # time to first token
        for _ in range(3):
            writer.write(pong_bytes())
            await writer.drain()
            await asyncio.sleep(0.05)

    async with fake_provider(run) as port:
        got = await call(port, ping_request(USER), PongRes, first_timeout=3)
        assert len(got) == 3
    async with fake_provider(run) as port:
        with pytest.raises(RpcTimeout):
            async with aclosing(lumerin_call("127.0.0.1", port, ping_request(USER), PongRes,
                                             timeout=0.2)) as responses:
                _ = [r async for r in responses]


async def test_endless_whitespace_is_cut_off(server: LumerinServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for _ in range(40):  # 2.5 MiB of blanks against a 64 KiB request cap
            writer.write(b" " * 65536)
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        answer = b""  # the server hung up on unread data: a reset
    finally:
        writer.close()
    assert answer == b""
