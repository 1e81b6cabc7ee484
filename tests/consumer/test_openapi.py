"""``/openapi.json`` is true to the code.

Every route the consumer serves is in the document and every documented route is
served (both come from the one route table). Then schemathesis fuzzes the live
consumer of a devnet (real anvil, contracts and routers; a MOCK OpenAI backend)
from the document it serves: no 5xx, and every response has a documented status,
content type, headers and a body matching its schema. The routes that move MOR
(open and close a session) are fuzzed with fewer examples, but with valid bodies
and ids (the devnet's model, bid and a real open session) as well as invalid ones.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from proxy_router.consumer.access import AccessPolicy
from proxy_router.consumer.api import ROUTES
from proxy_router.consumer.openapi import build_document
from proxy_router.dev.devnet import MODEL_NAME, Devnet, DevnetState
from proxy_router.ports import free_port
from tests.consumer.conftest import AppFactory
from tests.integration.conftest import MockBackend

MOVES_MOR = r"/session$|/close$"
MESSAGES = [{"role": "user", "content": "Say hello."}]


# -- the document and the router agree -------------------------------------------------------


async def test_every_served_route_is_documented_and_every_documented_route_served(
        app_factory: AppFactory):
    async with app_factory() as (client, _):
        doc = await (await client.get("/openapi.json")).json()
        served = set()
        assert client.app is not None
        for route in client.app.router.routes():
            assert route.resource is not None
            served.add((route.method.lower(), route.resource.canonical))
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
    assert len(documented) == len(ROUTES)


async def test_the_document_requires_a_credential_exactly_where_the_app_does(
        app_factory: AppFactory):
    async with app_factory() as (client, _):
        open_local = (await (await client.get("/openapi.json")).json())["paths"]
    async with app_factory(api_token="0123456789abcdef") as (client, _):
        with_token = (await (await client.get("/openapi.json")).json())["paths"]

    def security(paths: dict[str, Any], method: str, path: str) -> list[dict[str, Any]]:
        return list(paths[path][method]["security"])

    close = "/blockchain/sessions/{session}/close"
    assert security(open_local, "post", close) == [{"bearerAuth": []}, {"cookieAuth": []}]
    assert {} in security(open_local, "post", "/v1/chat/completions")  # optional on loopback
    assert security(open_local, "get", "/healthcheck") == []
    assert security(with_token, "post", "/v1/chat/completions") == [{"bearerAuth": []}]
    assert security(with_token, "get", "/blockchain/balance") == [{"bearerAuth": []}]
    assert security(with_token, "get", "/metrics") == []


def test_request_and_response_schemas_are_the_handlers_pydantic_models():
    from proxy_router.consumer.schemas import ChatRequest, Settlement

    by_handler = {r.handler: r for r in ROUTES}
    assert by_handler["chat_completions"].body is ChatRequest
    assert by_handler["close_session"].returns is Settlement


# -- schemathesis against a live consumer ------------------------------------------------------
#
# The fuzzed document is built from the route table exactly as a consumer without a
# configured credential builds it (the first test below checks that the live consumer
# serves this very document), plus examples: the devnet's model, and placeholders that
# each case swaps for the devnet's bid and for a session opened for the purpose, so the
# explicit-examples phase exercises the paid paths and not only 404s.

BID = "0x" + "b1" * 32
SESSION = "0x" + "5e" * 32


def fuzzed_document() -> dict[str, Any]:
    doc = build_document(ROUTES, AccessPolicy("generated-at-startup", None, True))
    values = {"model": [MODEL_NAME], "bid": [BID], "session": [SESSION]}
    for ops in doc["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["in"] == "path" and param["name"] in values:
                    param["examples"] = {f"e{i}": {"value": v}
                                         for i, v in enumerate(values[param["name"]])}
    chat = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    chat["application/json"]["examples"] = {
        "whole": {"value": {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 4}},
        "streamed": {"value": {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 4,
                               "stream": True, "stream_options": {"include_usage": True}}}}
    legacy = doc["paths"]["/v1/completions"]["post"]["requestBody"]["content"]
    legacy["application/json"]["examples"] = {
        "whole": {"value": {"model": MODEL_NAME, "prompt": "Say", "max_tokens": 4}},
        "streamed": {"value": {"model": MODEL_NAME, "prompt": [1, 2], "max_tokens": 4,
                               "stream": True}}}
    return doc


schema = schemathesis.openapi.from_dict(fuzzed_document())
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetState]:
    """A devnet whose provider has slots to spare for the sessions fuzzing opens."""
    backend = MockBackend(free_port(), ["--tokens", "4"]).start()
    net = Devnet(tmp_path_factory.mktemp("openapi-devnet"), progress=lambda _: None)
    try:
        yield net.up(backend_url=backend.url, concurrent_slots=64,
                     extra_router_env={"FIRST_TOKEN_TIMEOUT_S": "5"})
    finally:
        net.down()
        backend.stop()


def call(state: DevnetState, method: str, path: str, body: dict[str, Any] | None = None
         ) -> Any:
    req = urllib.request.Request(state.consumer_base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={**state.auth(), "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def open_session(live: DevnetState) -> str:
    """A real session the close route's example closes (once; later closes are 409s)."""
    opened = call(live, "POST", f"/blockchain/models/{live.model_id}/session",
                  {"sessionDuration": 300})
    return str(opened["sessionId"])


# A schema-valid prompt may still be refused, for what a JSON schema cannot say: a
# field that disagrees with another (a tool choice naming no tool), ``n`` above what is
# served, what the provider's model server cannot honour (provider/normalize.py), or a
# model of the other kind (an embedding model asked to chat). Any other 400 for valid
# data is the document and the validation drifting apart.
REFUSED_VALID_PROMPT = {"invalid_value", "unsupported_value", "bad_request",
                        "model_not_supported"}
PROMPT_ROUTES = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}


def run(case: Any, state: DevnetState, session_id: str) -> None:
    real = {BID: state.bid_id, SESSION: session_id}
    if case.path_parameters:
        case.path_parameters = {k: real.get(v, v) for k, v in case.path_parameters.items()}
    if case.path not in PROMPT_ROUTES:
        case.call_and_validate(base_url=state.consumer_base, headers=state.auth())
        return
    response = case.call_and_validate(base_url=state.consumer_base, headers=state.auth(),
                                      excluded_checks=[positive_data_acceptance])
    if case.meta is not None and case.meta.generation.mode.is_positive and \
            response.status_code == 400:
        assert response.json()["error"]["code"] in REFUSED_VALID_PROMPT, response.text


@pytest.mark.integration
def test_the_live_consumer_serves_the_fuzzed_document(live: DevnetState):
    served = call(live, "GET", "/openapi.json")
    assert served == build_document(ROUTES, AccessPolicy("generated-at-startup", None, True))


@pytest.mark.integration
@schema.exclude(path_regex=MOVES_MOR).parametrize()
@FUZZ
def test_every_route_answers_as_documented_and_never_with_a_5xx(
        case: Any, live: DevnetState, open_session: str):
    run(case, live, open_session)


@pytest.mark.integration
@schema.include(path_regex=MOVES_MOR).parametrize()
@settings(FUZZ, max_examples=8)
def test_opening_and_closing_sessions_answer_as_documented(
        case: Any, live: DevnetState, open_session: str):
    run(case, live, open_session)


@pytest.mark.integration
def test_fuzzing_opened_and_closed_sessions_and_left_none_stuck(live: DevnetState,
                                                               open_session: str):
    """The paid paths ran, and what the fuzzers left open settles to the wei."""
    rows = call(live, "GET", "/blockchain/sessions")
    assert len(rows) > 1, "the fuzzers opened no session of their own"
    assert {r["sessionId"]: r["status"] for r in rows}[open_session] == "closed"
    for row in rows:
        if row["status"] == "open":
            settled = call(live, "POST", f"/blockchain/sessions/{row['sessionId']}/close")
            assert int(settled["stake"]) == int(settled["providerEarned"]) + int(
                settled["userRefund"])
