"""How a model server's errors reach a peer: the request's own faults keep their 4xx and
get OpenAI's code, a busy backend its 429/503 and a Retry-After, the backend's own
failures stay 502s; a streamed request is refused as an unstreamed one is; and no
backend text (file paths, URLs, tracebacks) is in any message a peer gets.

The backend is the MOCK OpenAI server failing on demand, or a raw server for what only
llama-cpp-python does (a refused stream answered 200 and empty).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy_router.dev.mock_openai import MockOpenAIServer
from proxy_router.morrpc import ErrorCode, RpcError
from proxy_router.provider.backend import (
    BackendError,
    BackendStreamBroken,
    OpenAIBackend,
    parse_error_body,
)
from proxy_router.provider.service import backend_refusal
from tests.provider import test_service
from tests.provider.fakes import Handler, Serve
from tests.provider.test_service import (
    MESSAGES,
    SESSION,
    Provider,
    a_session,
    prompt,
    prompt_context,
)

provider = test_service.provider  # the fixture: a ProviderService on fakes and the MOCK

PROMPT = {"messages": [{"role": "user", "content": "hello there"}]}
# What llama-cpp-python's server answers, verbatim (llama_cpp/server/errors.py).
LLAMA_CONTEXT = {"error": {
    "message": "This model's maximum context length is 2048 tokens. However, you requested "
               "3012 tokens (3012 in the messages, None in the completion). Please reduce "
               "the length of the messages or completion.",
    "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
LLAMA_VALIDATION = {"error": {
    "message": "1 validation error:\n  {'type': 'float_parsing', 'loc': ('body', "
               "'temperature'), 'msg': 'Input should be a valid number, unable to parse "
               "string as a number', 'input': 'hot'}\n\n  File \"/srv/venv/lib/python3.11/"
               "site-packages/llama_cpp/server/app.py\", line 376, in create_chat_completion"
               "\n    POST http://10.0.0.7:8080/v1/chat/completions",
    "type": "internal_server_error", "param": None, "code": None}}
LLAMA_UNION = {"error": {
    "message": "2 validation errors:\n  {'type': 'literal_error', 'loc': ('body', 'messages', "
               "0, 'ChatCompletionRequestSystemMessage', 'role'), 'msg': \"Input should be "
               "'system'\", 'input': 'developer'}\n  {'type': 'literal_error', 'loc': ('body', "
               "'messages', 0, 'ChatCompletionRequestUserMessage', 'role'), 'msg': \"Input "
               "should be 'user'\", 'input': 'developer'}\n\n  File \"/srv/app.py\", line 3",
    "type": "internal_server_error", "param": None, "code": None}}


def backend(url: str, http: aiohttp.ClientSession) -> OpenAIBackend:
    return OpenAIBackend(url, model_name="served-model", session=http)


async def refusal_of(b: OpenAIBackend, *, streamed: bool,
                     body: dict[str, Any] = PROMPT) -> BackendError:
    with pytest.raises(BackendError) as err:
        if streamed:
            async for _ in b.stream_events(body):
                pass
        else:
            await b.complete_chat(body)
    return err.value


def assert_nothing_internal(text: str) -> None:
    for internal in ("/srv", "/v1/", "http", ".py", "10.0.0.7", "File", "Traceback"):
        assert internal not in text, text


# -- classification, with the MOCK backend failing on demand --------------------------------


@pytest.mark.parametrize(("status", "message", "refusal", "client_status"), [
    (400, LLAMA_CONTEXT["error"]["message"], "context_length_exceeded", 400),
    (400, "the request exceeds the available context size, try increasing it",
     "context_length_exceeded", 400),  # llama.cpp's own server
    (400, "temperature must be non-negative", "invalid_request_error", 400),
    (413, "body too large", "invalid_request_error", 413),
    (422, "unprocessable", "invalid_request_error", 422),
    (429, "slow down", "rate_limit_exceeded", 429),
    (503, "Loading model", "backend_overloaded", 503),
    (401, "invalid api key", "failed", None),  # the provider's key, not the client's fault
    (404, "model not found", "failed", None),  # the provider's model name
    (500, "CUDA error: out of memory", "failed", None),
], ids=["context-llama-cpp-python", "context-llama-cpp", "bad-value", "too-large",
        "unprocessable", "rate-limited", "loading", "provider-key", "provider-model",
        "crash"])
@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "unstreamed"])
async def test_each_backend_status_is_classified_the_same_streamed_or_not(
        mock_openai: MockOpenAIServer, http: aiohttp.ClientSession, streamed: bool,
        status: int, message: str, refusal: str, client_status: int | None) -> None:
    mock_openai.options.mode, mock_openai.options.fail_status = "fail", status
    mock_openai.options.fail_message = message
    err = await refusal_of(backend(mock_openai.base_url, http), streamed=streamed)
    assert (err.status, err.refusal) == (status, refusal)
    if client_status is not None:
        assert err.client_status == client_status
    assert message not in err.client_message, "a backend's text stays in our log"


def test_a_context_overflow_is_told_with_the_sizes_the_backend_gave() -> None:
    body = parse_error_body(json.dumps(LLAMA_CONTEXT).encode(), "error")
    err = BackendError(400, body.message, body=body)
    assert err.refusal == "context_length_exceeded"
    assert err.client_message == (
        "This model's maximum context length is 2048 tokens, and the messages (3012 tokens) "
        "do not fit in it. Shorten the messages or start a new conversation.")


def test_llama_cpp_s_own_context_error_gives_its_sizes_too() -> None:
    raw = {"error": {"code": 400, "type": "exceed_context_size_error", "n_ctx": 4096,
                     "n_prompt_tokens": 5000, "message": "the request exceeds the available "
                     "context size, try increasing it"}}
    body = parse_error_body(json.dumps(raw).encode(), "error")
    err = BackendError(400, body.message, body=body)
    assert err.refusal == "context_length_exceeded"
    assert "4096 tokens" in err.client_message and "5000 tokens" in err.client_message


def test_a_validation_error_answered_as_a_500_is_the_request_s_fault_without_the_traceback(
) -> None:
    body = parse_error_body(json.dumps(LLAMA_VALIDATION).encode(), "error")
    err = BackendError(500, body.message, body=body)
    assert (err.refusal, err.client_status) == ("invalid_request_error", 400)
    assert err.client_message == ("the model server refused the request: temperature: "
                                  "Input should be a valid number, unable to parse string "
                                  "as a number")
    assert_nothing_internal(err.client_message)


def test_a_union_s_problems_are_named_by_field_not_by_internal_class() -> None:
    body = parse_error_body(json.dumps(LLAMA_UNION).encode(), "error")
    message = BackendError(500, body.message, body=body).client_message
    assert message == ("the model server refused the request: messages.0.role: Input should "
                       "be 'system' or Input should be 'user'")
    assert "ChatCompletionRequest" not in message
    assert_nothing_internal(message)


def test_fastapi_s_422_detail_names_the_fields() -> None:
    raw = {"detail": [{"loc": ["body", "n"], "msg": "Input should be greater than 0",
                       "type": "greater_than"}]}
    body = parse_error_body(json.dumps(raw).encode(), "error")
    err = BackendError(422, body.message, body=body)
    assert err.client_message == ("the model server refused the request: n: Input should be "
                                  "greater than 0")


# -- Retry-After, and llama-cpp-python's refused streams: served raw -------------------------

@pytest.mark.parametrize(("header", "seconds"), [("7", 7), ("0.2", 1), ("86400", 60),
                                                 ("Wed, 21 Oct 2015 07:28:00 GMT", 1),
                                                 (None, 1)])
async def test_a_busy_backend_s_retry_after_is_passed_on_within_reason(
        serve: Serve, http: aiohttp.ClientSession, header: str | None, seconds: int) -> None:
    async def busy(request: web.Request) -> web.StreamResponse:
        headers = {"Retry-After": header} if header else {}
        return web.json_response({"error": {"message": "busy"}}, status=429, headers=headers)

    err = await refusal_of(backend(await serve(busy), http), streamed=True)
    assert err.refusal == "rate_limit_exceeded" and err.retry_after_s() == seconds


def llama_cpp_python(seen: list[dict[str, Any]]) -> Handler:
    """llama-cpp-python's answer to a prompt over the context: 400 unstreamed; streamed,
    200 and a stream that ends before any event."""
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        if not body.get("stream"):
            return web.json_response(LLAMA_CONTEXT, status=400)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        return resp
    return handler


async def test_a_stream_refused_with_an_empty_200_gets_the_unstreamed_refusal(
        serve: Serve, http: aiohttp.ClientSession) -> None:
    seen: list[dict[str, Any]] = []
    b = backend(await serve(llama_cpp_python(seen)), http)
    streamed = await refusal_of(b, streamed=True,
                                body={**PROMPT, "max_completion_tokens": 500, "stream": True})
    unstreamed = await refusal_of(b, streamed=False)
    assert streamed.refusal == unstreamed.refusal == "context_length_exceeded"
    assert streamed.client_message == unstreamed.client_message
    asked, probe = seen[0], seen[1]
    assert asked["stream"] is True
    assert probe["stream"] is False and probe["max_tokens"] == 1, "asked again, for one token"
    assert "max_completion_tokens" not in probe and "stream_options" not in probe
    assert probe["messages"] == PROMPT["messages"]


async def test_the_unstreamed_ask_is_made_again_when_its_connection_was_closed_under_it(
        serve: Serve, http: aiohttp.ClientSession) -> None:
    """llama-cpp-python closes the connection of the stream its handler failed, which
    the client had put back in its pool: the first ask meets it closed."""
    seen: list[dict[str, Any]] = []
    refuse = llama_cpp_python(seen)

    async def closes_once(request: web.Request) -> web.StreamResponse:
        if len(seen) == 1:  # the first unstreamed ask
            seen.append(await request.json())
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        return await refuse(request)

    err = await refusal_of(backend(await serve(closes_once), http), streamed=True)
    assert err.refusal == "context_length_exceeded"
    assert [body["stream"] for body in seen] == [True, False, False]


async def test_an_empty_stream_the_backend_would_answer_unstreamed_stays_broken(
        serve: Serve, http: aiohttp.ClientSession) -> None:
    async def drops_streams(request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            return web.json_response({"choices": [{"index": 0, "finish_reason": "length",
                                                   "message": {"content": "x"}}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        return resp

    with pytest.raises(BackendStreamBroken, match="without \\[DONE\\]"):
        async for _ in backend(await serve(drops_streams), http).stream_events(PROMPT):
            pass


# -- what the peer is told (ProviderService) ------------------------------------------------


def refused_as(status: int, raw: dict[str, Any], retry_after: float | None = None) -> RpcError:
    body = parse_error_body(json.dumps(raw).encode(), "error")
    return backend_refusal(BackendError(status, body.message, body=body,
                                        retry_after=retry_after))


def test_a_refusal_is_a_backend_error_whose_data_names_the_openai_code() -> None:
    context = refused_as(400, LLAMA_CONTEXT)
    assert context.code == ErrorCode.BACKEND_ERROR
    assert context.data == {"status": 400, "code": "context_length_exceeded",
                            "param": "messages"}
    invalid = refused_as(400, {"error": {"message": "bad", "param": "temperature"}})
    assert invalid.data == {"status": 400, "code": "invalid_request_error",
                            "param": "temperature"}
    assert refused_as(429, {"error": "slow"}, retry_after=4).data == {
        "status": 429, "code": "rate_limit_exceeded", "retryAfter": 4}
    assert refused_as(503, {"error": "loading"}).data == {
        "status": 503, "code": "backend_overloaded", "retryAfter": 1}


def test_the_backend_s_own_failure_is_a_plain_backend_error_as_before() -> None:
    failed = refused_as(500, {"error": {"message": "segfault in /srv/llama.so"}})
    assert failed.data == {"status": 500}
    assert failed.message == "the model server refused the request (HTTP 500)"


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "unstreamed"])
async def test_a_prompt_over_the_context_is_refused_to_the_peer_with_its_code(
        provider: Provider, mock_openai: MockOpenAIServer, streamed: bool) -> None:
    provider.market.sessions[SESSION] = a_session()
    mock_openai.options.mode, mock_openai.options.fail_status = "fail", 400
    mock_openai.options.fail_message = str(LLAMA_CONTEXT["error"]["message"])
    with pytest.raises(RpcError) as err:
        await prompt(provider, prompt_context({"messages": MESSAGES, "stream": streamed}))
    assert err.value.code == ErrorCode.BACKEND_ERROR
    assert err.value.data is not None and err.value.data["code"] == "context_length_exceeded"
    assert "2048 tokens" in err.value.message
    assert provider.service.capacity.prompts_in_flight(a_session().model_id) == 0
    assert provider.store.recorded == [], "a refused prompt is not billed as an answer"
