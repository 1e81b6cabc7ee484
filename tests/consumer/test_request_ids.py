"""Cost in the open: every response names its request, every chat answer the session
that paid for it, its price and its cost so far; and by default a session opened for
one question is closed soon after, not paid to its end."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from proxy_router.config import Settings
from proxy_router.consumer.access import AccessPolicy
from proxy_router.consumer.api import ROUTES, ConsumerApi
from proxy_router.consumer.chat import ChatService
from proxy_router.consumer.openapi import build_document
from proxy_router.consumer.schemas import ChatCompletion, ChatRequest
from proxy_router.consumer.sessions import ConsumerSession
from proxy_router.metrics import Metrics
from proxy_router.morrpc import SessionKey
from tests.consumer.conftest import AppFactory, FakeSessions, consumer_settings

GENERATED = re.compile(r"^req_[0-9a-f]{32}$")
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
OPENED_AT, PRICE, STAKE = 1_000, 10**12, 600 * 10**12
SESSION = ConsumerSession("0x" + "5e" * 32, "0x" + "11" * 32, "0x" + "b1" * 32,
                          "0x" + "aa" * 20, "127.0.0.1:1", SessionKey.generate(), STAKE,
                          OPENED_AT, OPENED_AT + 600, price_per_second=PRICE)
COMPLETION = {"id": "chatcmpl-1", "created": 5, "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "hello"},
     "finish_reason": "stop"}]}
CHUNK = (b'data: {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 5, '
         b'"model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n')


class OneChunkStream:
    """A provider stream whose only chunk was the first (``FakeReply.first``)."""

    async def relay(self, sink: object) -> None:
        pass

    async def aclose(self) -> None:
        pass


class FakeReply:
    session = SESSION
    first = CHUNK
    usage = None
    stream = OneChunkStream()

    async def aclose(self) -> None:
        pass


class FakeChat:
    """Answers from ``SESSION``, logging a line while it answers (as failover does)."""

    async def complete(self, req: ChatRequest, session_id: str | None
                       ) -> tuple[ChatCompletion, ConsumerSession]:
        structlog.get_logger("fake-chat").info("answering")
        return ChatCompletion.model_validate(COMPLETION), SESSION

    async def start(self, req: ChatRequest, session_id: str | None) -> FakeReply:
        return FakeReply()

    def finished(self, reply: FakeReply) -> None:
        pass


class Clock:
    now = OPENED_AT


@asynccontextmanager
async def chat_app(storage: Path) -> AsyncIterator[tuple[TestClient[Any, Any], type[Clock]]]:
    """The real app, its chat answered by ``FakeChat`` at the chain time ``Clock.now``."""
    sessions = FakeSessions()
    sessions.index.chain_now = lambda: Clock.now  # type: ignore[method-assign]
    api = ConsumerApi(cast(Any, sessions), cast(ChatService, FakeChat()),
                      metrics=Metrics("consumer"),
                      access=AccessPolicy.from_settings(consumer_settings(storage)))
    async with TestClient(TestServer(api.app(), host="127.0.0.1")) as client:
        yield client, Clock


# -- X-Request-Id --------------------------------------------------------------------------


async def test_every_response_gets_a_new_request_id_when_the_client_sends_none(
        app_factory: AppFactory):
    async with app_factory(api_token="s3cret-token-0123456789") as (client, _):
        responses = [await client.get("/healthcheck"), await client.get("/openapi.json"),
                     await client.get("/v1/models"),  # 401: no credential
                     await client.get("/no/such/route"),  # 404
                     await client.post("/v1/chat/completions", data=b"{not json")]
    assert [r.status for r in responses] == [200, 200, 401, 404, 401]
    ids = [r.headers["X-Request-Id"] for r in responses]
    assert all(GENERATED.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids), "each request has its own id"


@pytest.mark.parametrize("given", ["req_abc123", "7f1c0d2e-3b4a-4c5d-9e8f-0a1b2c3d4e5f",
                                   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                   "trace:a/b+c=", "x" * 128])
async def test_a_well_formed_client_request_id_is_echoed(app_factory: AppFactory, given: str):
    async with app_factory() as (client, _):
        resp = await client.get("/v1/models", headers={"X-Request-Id": given})
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == given
        # an error answer names the request too
        resp = await client.post("/v1/chat/completions", data=b"{not json",
                                 headers={"X-Request-Id": given})
        assert resp.status == 400
        assert resp.headers["X-Request-Id"] == given


@pytest.mark.parametrize("given", ["", "x" * 129, "two words", 'quote"d', "new\tline",
                                   "ümlaut", "a;b", "<script>"])
async def test_a_malformed_or_too_long_request_id_is_replaced_never_echoed(
        app_factory: AppFactory, given: str):
    async with app_factory() as (client, _):
        resp = await client.get("/v1/models", headers={"X-Request-Id": given})
    assert resp.status == 200, "a bad id is not the request's fault: it is served"
    assert GENERATED.match(resp.headers["X-Request-Id"])


async def test_the_request_id_is_in_the_log_lines_of_that_request(tmp_path: Path):
    async with chat_app(tmp_path) as (client, _):
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            resp = await client.post("/v1/chat/completions", json=CHAT,
                                     headers={"X-Request-Id": "req_mine"})
            generated = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == generated.status == 200
    answering = [e for e in logs if e["event"] == "answering"]
    assert [e.get("request_id") for e in answering] == [
        "req_mine", generated.headers["X-Request-Id"]]


# -- what a chat answer costs -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_chat_answer_names_its_session_price_and_cost_so_far(tmp_path: Path,
                                                                     stream: bool):
    async with chat_app(tmp_path) as (client, clock):
        clock.now = OPENED_AT + 40
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        await resp.read()
        clock.now = OPENED_AT + 100
        later = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        await later.read()
    assert resp.status == later.status == 200
    assert resp.headers["X-Session-Id"] == SESSION.session_id
    assert resp.headers["X-Session-Price-Per-Second"] == str(PRICE)
    assert resp.headers["X-Session-Cost-So-Far"] == str(40 * PRICE), "MOR wei: 40 s so far"
    assert later.headers["X-Session-Cost-So-Far"] == str(100 * PRICE), "it grows as it runs"
    assert GENERATED.match(resp.headers["X-Request-Id"])


async def test_a_session_past_its_end_costs_its_whole_length_and_no_more(tmp_path: Path):
    async with chat_app(tmp_path) as (client, clock):
        clock.now = OPENED_AT + 10_000
        resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.headers["X-Session-Cost-So-Far"] == str(600 * PRICE) == str(STAKE)


async def test_a_browser_page_of_a_listed_origin_may_read_the_cost_headers(
        app_factory: AppFactory):
    origin = "https://app.example.com"
    async with app_factory(cors_origins=origin) as (client, _):
        resp = await client.get("/v1/models", headers={"Origin": origin})
        exposed = {h.strip().lower() for h in
                   resp.headers["Access-Control-Expose-Headers"].split(",")}
        preflight = await client.options("/v1/chat/completions", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
    assert exposed >= {"x-request-id", "x-session-id", "x-session-price-per-second",
                       "x-session-cost-so-far"}
    assert "x-request-id" in preflight.headers["Access-Control-Allow-Headers"].lower()


def test_the_api_document_promises_the_request_id_everywhere_and_the_cost_on_chat():
    doc = build_document(ROUTES, AccessPolicy("generated-at-startup", None, True))
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert any(p["name"] == "X-Request-Id" and p["in"] == "header"
                       for p in op["parameters"]), (method, path)
            for status, response in op["responses"].items():
                assert response["headers"]["X-Request-Id"]["required"], (path, status)
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert set(chat["200"]["headers"]) == {"X-Request-Id", "X-Session-Id",
                                           "X-Session-Price-Per-Second",
                                           "X-Session-Cost-So-Far"}
    assert set(chat["429"]["headers"]) == {"X-Request-Id"}, "no session paid for an error"


# -- the idle default -------------------------------------------------------------------------


def test_by_default_a_session_for_one_question_is_closed_long_before_its_end(
        tmp_path: Path):
    settings = consumer_settings(tmp_path)
    assert settings.session_idle_timeout_s == 60
    assert settings.session_idle_timeout_s <= settings.session_duration_s / 10, \
        "one question pays at most a tenth of the session it opened"


def test_in_morpheus_stake_mode_a_session_runs_to_its_end_by_default():
    """The emission pays the provider there: an early close saves the wallet nothing and
    holds part of its stake until the next UTC midnight."""
    assert Settings(network="base", session_payment="stake").session_idle_timeout_s == 0
    assert Settings(network="base", session_payment="direct").session_idle_timeout_s == 60
    assert Settings(network="base", session_payment="stake",
                    session_idle_timeout_s=30).session_idle_timeout_s == 30, "a set value wins"
