"""Our provider speaks the reference's raw-TCP MOR-RPC on its one port, as a Go consumer
(or MorpheusUI) sees it: driven here by ``morrpc.lumerin``'s consumer side on loopback.

The ProviderService is the one of tests/provider/test_service.py (in-memory market and
index, the MOCK OpenAI backend) with a real store, so reports carry the metered tokens;
the port is ``serve_app(raw=LumerinWire.handle)``, as the runtime serves it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from proxy_router.chain.encoding import Approval, recover_blob_signer
from proxy_router.chain.types import Session
from proxy_router.dev.mock_openai import MockOpenAIServer
from proxy_router.metrics import Metrics
from proxy_router.morrpc import ErrorCode, ReplayGuard, RpcError, Signer
from proxy_router.morrpc.lumerin import (
    AGENT_GET_TOOLS,
    STREAM_START,
    GetAgentToolsReq,
    GetAgentToolsRes,
    LumerinLimits,
    OpenedSession,
    PongRes,
    Request,
    Response,
    SessionPromptRes,
    SessionReportRes,
    SessionReq,
    SessionRes,
    StreamStartReq,
    StreamStartRes,
    check_pong,
    check_report_response,
    check_session_response,
    ecies_decrypt_hex,
    lumerin_call,
    new_request_id,
    now_ms,
    ping_request,
    prompt_chunks,
    prompt_request,
    report_request,
    session_request,
)
from proxy_router.netguard import serve_app
from proxy_router.provider.lumerin_wire import AUTH_FAILED, LumerinWire
from proxy_router.provider.models_config import ModelsConfig
from proxy_router.provider.service import ProviderService
from proxy_router.store.db import Store
from tests.provider.test_service import (
    BID,
    MESSAGES,
    MODEL,
    PROVIDER,
    SESSION,
    STRANGER,
    USER,
    FakeIndex,
    FakeMarket,
    a_bid,
    a_session,
    now,
)

CHAIN = 31337
MAX_REQUEST = 64 * 1024


@dataclass
class Served:
    service: ProviderService
    market: FakeMarket
    store: Store
    wire: LumerinWire
    backend: MockOpenAIServer
    port: int

    def counted(self, method: str, code: str) -> float:
        value = self.service.metrics.registry.get_sample_value(
            "proxy_router_reference_rpc_requests_total", {"method": method, "code": code})
        return value or 0.0


@pytest.fixture
async def served(mock_openai: MockOpenAIServer, http: aiohttp.ClientSession,
                 tmp_path: Path) -> AsyncIterator[Served]:
    market, index = FakeMarket(), FakeIndex()
    store = await Store.open(tmp_path, "provider")
    models = ModelsConfig.model_validate({"models": [
        {"modelId": MODEL, "modelName": "served", "apiUrl": mock_openai.base_url,
         "concurrentSlots": 2}]})
    service = ProviderService(
        account=PROVIDER.account, market=cast(Any, market), index=cast(Any, index),
        models=models, backend_urls={MODEL: mock_openai.base_url}, store=store, http=http,
        metrics=Metrics("provider"))
    wire = LumerinWire(service, PROVIDER, replay_guard=ReplayGuard(60),
                       limits=LumerinLimits(max_request_bytes=MAX_REQUEST),
                       request_timeout_s=5)

    async def healthcheck(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/healthcheck", healthcheck)
    runner, port = await serve_app(app, "127.0.0.1", 0, raw=wire.handle)
    try:
        yield Served(service, market, store, wire, mock_openai, port)
    finally:
        await runner.cleanup()
        await store.close()


async def call(s: Served, request: Request[Any], result_type: type[Any]) -> list[Response[Any]]:
    async with aclosing(lumerin_call("127.0.0.1", s.port, request, result_type,
                                     timeout=10)) as responses:
        return [r async for r in responses]


async def open_session(s: Served, signer: Signer = USER) -> OpenedSession:
    s.market.bids[BID] = a_bid()
    [res] = await call(s, session_request(signer, bid_id=BID, spend=0), SessionRes)
    return check_session_response(res, provider=PROVIDER.address, user=signer.address,
                                  bid_id=BID, chain_id=CHAIN)


async def ask(s: Served, body: dict[str, Any], signer: Signer = USER,
              ) -> tuple[list[dict[str, Any]], list[Response[SessionPromptRes]]]:
    """A prompt's decrypted chunks, and every response the provider sent before EOF."""
    seen: list[Response[SessionPromptRes]] = []
    calls = lumerin_call("127.0.0.1", s.port,
                         prompt_request(signer, session_id=SESSION, body=json.dumps(body)),
                         SessionPromptRes, timeout=10)

    async def recorded() -> AsyncIterator[Response[SessionPromptRes]]:
        async for response in calls:
            seen.append(response)
            yield response

    async with aclosing(calls):
        chunks = [json.loads(c) async for c in prompt_chunks(
            recorded(), user_key=USER, provider_public_key=PROVIDER.public_key)]
    return chunks, seen



async def refused(coro: Any) -> RpcError:
    with pytest.raises(RpcError) as err:
        await coro
    return err.value


def error_of(response: Response[Any]) -> RpcError:
    """The error a consumer reads from ``response`` (its code from the reference's text)."""
    with pytest.raises(RpcError) as err:
        response.unwrap()
    return err.value


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["delta"].get("content") or "" for chunk in chunks
                   for c in chunk["choices"])


# -- network.ping and session.request -------------------------------------------------------


async def test_a_ping_gets_a_pong_signed_by_the_provider(served: Served) -> None:
    ping = ping_request(USER)
    [pong] = await call(served, ping, PongRes)
    assert check_pong(pong, provider=PROVIDER.address, nonce=ping.params.nonce).version
    assert served.counted("network.ping", "OK") == 1


async def test_a_session_request_gets_an_approval_the_provider_signed_for_the_bid(
        served: Served) -> None:
    opened = await open_session(served)
    assert opened.provider_public_key == PROVIDER.public_key
    approval = Approval.decode(opened.approval)
    assert "0x" + approval.bid_id.hex() == BID and approval.user == USER.address
    assert approval.timestamp <= now() < 10**11, "seconds, as the contract reads them"
    assert recover_blob_signer(opened.approval, opened.approval_sig) == PROVIDER.address
    assert served.service.approvals.outstanding(USER.address) == 1, "the same ledger"
    assert served.wire.keys.get(USER.address) == USER.public_key


@pytest.mark.parametrize("key", [STRANGER.public_key, USER.public_key],
                         ids=["stranger's-key", "user's-key"])
async def test_a_session_request_not_signed_by_the_user_it_names_is_refused(
        served: Served, key: bytes) -> None:
    served.market.bids[BID] = a_bid()
    forged = SessionReq(user=USER.address, key=key, spend=0, timestamp=now_ms(), bid_id=BID)
    request = Request(new_request_id(), "session.request", forged.signed(STRANGER))
    [res] = await call(served, request, SessionRes)
    error = error_of(res)
    assert (error.code, error.message) == (ErrorCode.BAD_SIGNATURE, AUTH_FAILED)
    assert len(served.service.approvals) == 0 and len(served.wire.keys) == 0


async def test_a_refused_session_request_gets_the_reference_error(served: Served) -> None:
    served.market.bids[BID] = a_bid(provider=STRANGER.address)
    [res] = await call(served, session_request(USER, bid_id=BID, spend=0), SessionRes)
    assert res.error is not None and not res.error.is_signed and res.error.code == 400
    assert error_of(res).code == ErrorCode.WRONG_PROVIDER
    assert served.counted("session.request", "WRONG_PROVIDER") == 1


# -- session.prompt -------------------------------------------------------------------------


async def test_a_streamed_prompt_gets_openai_chunks_then_done_then_eof(served: Served) -> None:
    await open_session(served)
    served.market.sessions[SESSION] = a_session()
    chunks, seen = await ask(served, {"messages": MESSAGES, "stream": True})
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert text_of(chunks) == "tok " * 5
    assert len(seen) == len(chunks) + 1, "one response per backend event, then [DONE]"
    assert ecies_decrypt_hex(USER, seen[-1].unwrap().message) == b'"[DONE]"'
    assert served.service.capacity.tracks(SESSION), "the session holds a slot"
    assert (await served.store.usage(SESSION))["completion_tokens"] == 5


async def test_a_prompt_not_streamed_gets_one_chat_completion_then_eof(served: Served) -> None:
    await open_session(served)
    served.market.sessions[SESSION] = a_session()
    chunks, seen = await ask(served, {"messages": MESSAGES})  # no "stream": not streamed
    assert len(seen) == 1 and [c["object"] for c in chunks] == ["chat.completion"]
    assert chunks[0]["choices"][0]["message"]["content"] == "tok " * 5
    assert served.backend.last_request["stream"] is False


async def test_a_user_we_do_not_remember_is_served_with_its_wallet_key(served: Served) -> None:
    """After a restart, or a session opened over mor-rpc/1: no session.request came here."""
    served.market.sessions[SESSION] = a_session()
    chunks, _ = await ask(served, {"messages": MESSAGES, "stream": True})
    assert text_of(chunks) == "tok " * 5


@pytest.mark.parametrize("remembered", [True, False], ids=["key-remembered", "key-unknown"])
async def test_a_prompt_signed_by_another_key_is_refused_before_any_work(
        served: Served, remembered: bool) -> None:
    if remembered:
        await open_session(served)
    served.market.sessions[SESSION] = a_session()
    error = await refused(ask(served, {"messages": MESSAGES}, signer=STRANGER))
    assert (error.code, error.message) == (ErrorCode.BAD_SIGNATURE, AUTH_FAILED)
    assert served.backend.requests_seen == 0
    assert (await served.store.usage(SESSION))["prompts"] == 0
    assert not served.service.capacity.tracks(SESSION)


@pytest.mark.parametrize(("session", "code"), [
    (a_session(user=STRANGER.address), ErrorCode.BAD_SIGNATURE),
    (a_session(ends_at=now() - 1), ErrorCode.SESSION_EXPIRED),
    (a_session(closed=True), ErrorCode.SESSION_CLOSED),
    (Session(id=SESSION), ErrorCode.SESSION_NOT_FOUND),
], ids=["another-user", "expired", "closed", "unknown"])
async def test_a_prompt_on_a_session_we_cannot_serve_gets_the_reference_error(
        served: Served, session: Session, code: ErrorCode) -> None:
    await open_session(served)
    served.market.sessions[SESSION] = session
    error = await refused(ask(served, {"messages": MESSAGES}))
    assert error.code == code, "the reference's text, read back by classify_error"
    assert error.data == {"lumerin_code": 400}, "an unsigned infrastructure error"
    assert served.backend.requests_seen == 0


async def test_a_backend_http_error_is_a_signed_encrypted_model_error(served: Served) -> None:
    served.market.sessions[SESSION] = a_session()
    served.backend.options.mode, served.backend.options.fail_status = "fail", 422
    error = await refused(ask(served, {"messages": MESSAGES, "stream": True}))
    assert error.code == ErrorCode.BACKEND_ERROR and error.data is not None
    detail = error.data["providerModelError"]["error"]
    assert detail["code"] == 422 and "mock backend failure" not in detail["message"]


async def test_a_replayed_or_stale_prompt_is_refused(served: Served) -> None:
    served.market.sessions[SESSION] = a_session()
    prompt = prompt_request(USER, session_id=SESSION, body=json.dumps({"messages": MESSAGES}))
    [first] = await call(served, prompt, SessionPromptRes)
    [again] = await call(served, prompt, SessionPromptRes)
    assert first.error is None
    assert error_of(again).code == ErrorCode.REPLAYED_MESSAGE
    stale = prompt_request(USER, session_id=SESSION, body=json.dumps({"messages": MESSAGES}),
                           timestamp=now_ms() - 600_000)
    [late] = await call(served, stale, SessionPromptRes)
    assert error_of(late).code == ErrorCode.STALE_MESSAGE
    assert served.backend.requests_seen == 1


# -- session.report -------------------------------------------------------------------------


async def test_a_report_carries_the_metered_tokens_signed_by_the_provider(
        served: Served) -> None:
    opened = await open_session(served)
    served.market.sessions[SESSION] = a_session()
    await ask(served, {"messages": MESSAGES, "stream": True})
    await ask(served, {"messages": MESSAGES})
    [res] = await call(served, report_request(USER, session_id=SESSION), SessionReportRes)
    report = check_report_response(res, provider_public_key=opened.provider_public_key,
                                   session_id=SESSION, chain_id=CHAIN)
    usage = await served.store.usage(SESSION)
    assert usage["prompts"] == 2
    assert (report.input_tokens, report.output_tokens) == (usage["prompt_tokens"], 10)
    assert report.timestamp_ms <= now() < 10**11, "seconds, as the contract reads them"
    assert recover_blob_signer(res.unwrap().report, res.unwrap().signed_report) \
        == PROVIDER.address


async def test_a_report_for_another_user_is_refused(served: Served) -> None:
    served.market.sessions[SESSION] = a_session(user=STRANGER.address)
    [res] = await call(served, report_request(USER, session_id=SESSION), SessionReportRes)
    error = error_of(res)
    assert (error.code, error.message) == (ErrorCode.BAD_SIGNATURE, AUTH_FAILED)


# -- what the wire does not serve -----------------------------------------------------------


@pytest.mark.parametrize(("request_", "result_type"), [
    (Request("7", AGENT_GET_TOOLS, GetAgentToolsReq(session_id=SESSION, timestamp=now_ms())
             .signed(USER)), GetAgentToolsRes),
    (Request("8", STREAM_START, StreamStartReq(
        session_id=SESSION, stream_id="s1", total_chunks=1, file_size=10,
        content_type="audio/wav", timestamp=now_ms()).signed(USER)), StreamStartRes),
], ids=["agent.get_tools", "session.prompt.stream.start"])
async def test_a_method_we_do_not_serve_gets_the_reference_error(
        served: Served, request_: Request[Any], result_type: type[Any]) -> None:
    [res] = await call(served, request_, result_type)
    assert res.id == request_.id and res.result is None and res.error is not None
    assert res.error.code == 400 and not res.error.is_signed
    assert res.error.message.startswith(f"unknown method: {request_.method}")
    assert served.counted(request_.method, "UNKNOWN_METHOD") == 1


async def raw_exchange(port: int, payload: bytes) -> bytes:
    """Write ``payload``, then read until the provider closes (b"" if it reset first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        writer.close()


@pytest.mark.parametrize("payload", [
    b"{garbage", b'{"id":"1"', b"{" + b'"a":[' * 1000,
    b'{"id":"1","method":"session.prompt","params":{"message":"'
    + b"x" * (2 * MAX_REQUEST) + b'"}}',
], ids=["garbage", "truncated", "too-deep", "oversized"])
async def test_garbage_and_oversized_input_close_the_connection_and_the_port_serves_on(
        served: Served, payload: bytes) -> None:
    assert await raw_exchange(served.port, payload) == b""
    assert len(await call(served, ping_request(USER), PongRes)) == 1


async def test_http_on_the_same_port_still_answers(served: Served,
                                                   http: aiohttp.ClientSession) -> None:
    async with http.get(f"http://127.0.0.1:{served.port}/healthcheck") as response:
        assert response.status == 200 and (await response.json())["status"] == "ok"
    assert len(await call(served, ping_request(USER), PongRes)) == 1
