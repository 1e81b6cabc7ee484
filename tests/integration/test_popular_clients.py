"""The consumer is a drop-in OpenAI endpoint for the clients people use: the openai SDK
(sync here; async in ``test_openai_fidelity``), litellm and langchain-openai, each as its
users call it, against the real model (SmolLM2-135M in llama.cpp, a 2048-token context)
through a paid session (issue 12).

Each client's own types come back: parsed pydantic objects, litellm's exception classes,
langchain's messages. What a client sends that the consumer must honour is asserted on
the answer (``max_completion_tokens`` bounds it, a closed stream stops the model, a
prompt over the context is a 400 ``context_length_exceeded`` sent once, never retried).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.request
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field, SecretStr

from proxy_router.consumer.access import REQUEST_ID_HEADER, SESSION_HEADERS
from proxy_router.dev.devnet import PRICE_PER_SECOND, DevnetState

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
os.environ.setdefault("LITELLM_TELEMETRY", "False")
import litellm
from langchain_core.messages import (
    AIMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

litellm.telemetry = False
litellm.suppress_debug_info = True

pytestmark = [pytest.mark.integration,
              # litellm's own types, at import: nothing of ours
              pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning"),
              pytest.mark.filterwarnings("ignore:Accessing the 'model_:DeprecationWarning")]

HELLO: list[Any] = [{"role": "user", "content": "Say hello in three words."}]
LONG_ANSWER: list[Any] = [{"role": "user",
                           "content": "Write a long story about a dragon and a knight."}]
OVER_THE_CONTEXT: list[Any] = [{"role": "user", "content": " ".join(["word"] * 3000)}]  # n_ctx 2048
ENDLESS = {"messages": [{"role": "user", "content": "Write a very long story about a "
                                                    "dragon and a knight, with chapters."}],
           "max_tokens": 400, "logit_bias": {"0": -100, "2": -100}}
"""A stream that does not end by itself soon: SmolLM2's end tokens (0, 2) are forbidden."""
CHAT_ROUTE = {"method": "POST", "route": "/v1/chat/completions"}
ABORTED = "proxy_router_backend_requests_aborted_total"
QUEUE_WAIT = "proxy_router_prompt_queue_wait_seconds"


class City(BaseModel):
    name: str = Field(max_length=24)
    coastal: bool


# -- helpers -----------------------------------------------------------------------------


def samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return [(s.name, s.labels, float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def metric_sum(url: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if none yet)."""
    return sum(value for sample, have, value in samples(url)
               if sample == name and all(have.get(k) == v for k, v in labels.items()))


def chat_requests(state: DevnetState, **status: str) -> float:
    """Chat requests the consumer has answered (with ``status=...``: with that status)."""
    return metric_sum(state.consumer_base + "/metrics", "proxy_router_http_requests_total",
                      **CHAT_ROUTE, **status)


def provider_metric(state: DevnetState, name: str, **labels: str) -> float:
    return metric_sum(f"http://{state.provider_endpoint}/metrics", name, **labels)


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.2)


def sync_client(state: DevnetState, **options: Any) -> openai.OpenAI:
    """The sync SDK as users construct it (its default retries included)."""
    return openai.OpenAI(base_url=state.consumer_url, api_key="unused-locally", **options)


def langchain(state: DevnetState, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=state.consumer_url, api_key=SecretStr("unused-locally"),
                      model=state.model_name, **options)


def via_litellm(state: DevnetState) -> dict[str, Any]:
    """litellm's arguments for an OpenAI-compatible server."""
    return {"model": f"openai/{state.model_name}", "api_base": state.consumer_url,
            "api_key": "unused-locally"}


# -- the openai SDK, sync ----------------------------------------------------------------


def test_the_sync_openai_client_gets_an_answer_with_its_usage(devnet: DevnetState):
    reply = sync_client(devnet).chat.completions.create(
        model=devnet.model_name, messages=HELLO, max_tokens=8)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8


def test_a_sync_stream_with_include_usage_counts_the_prompt_as_the_whole_answer_does(
        devnet: DevnetState):
    client = sync_client(devnet)
    whole = client.chat.completions.create(model=devnet.model_name, messages=HELLO,
                                           max_tokens=8)
    chunks = list(client.chat.completions.create(
        model=devnet.model_name, messages=HELLO, max_tokens=8, stream=True,
        stream_options={"include_usage": True}))
    usages = [chunk.usage for chunk in chunks if chunk.usage is not None]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.usage is not None and len(usages) == 1, "one usage chunk, as OpenAI sends"
    (usage,) = usages
    assert chunks[-1].usage is usage and chunks[-1].choices == [], "it comes last, choiceless"
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert text


def test_the_raw_response_carries_the_request_id_and_what_pays_for_the_answer(
        devnet: DevnetState):
    client = sync_client(devnet)
    raw = client.chat.completions.with_raw_response.create(
        model=devnet.model_name, messages=HELLO, max_tokens=4)
    assert raw.status_code == 200
    assert re.fullmatch(r"req_[0-9a-f]{32}", raw.headers[REQUEST_ID_HEADER])
    session_id, price, cost = (raw.headers[h] for h in SESSION_HEADERS)
    assert re.fullmatch(r"0x[0-9a-f]{64}", session_id)
    assert int(price) == PRICE_PER_SECOND
    assert int(cost) >= 0 and int(cost) % PRICE_PER_SECOND == 0, "price × whole seconds"
    assert raw.parse().choices[0].message.content

    mine = client.chat.completions.with_raw_response.create(
        model=devnet.model_name, messages=HELLO, max_tokens=4,
        extra_headers={REQUEST_ID_HEADER: "trace-7f3a.b9"})
    assert mine.headers[REQUEST_ID_HEADER] == "trace-7f3a.b9", "the client's id is echoed"
    assert mine.headers[SESSION_HEADERS[0]] == session_id, "the session is reused"
    assert int(mine.headers[SESSION_HEADERS[2]]) >= int(cost)

    with client.chat.completions.with_streaming_response.create(
            model=devnet.model_name, messages=HELLO, max_tokens=4,
            stream=True) as streamed:
        assert streamed.headers["Content-Type"].startswith("text/event-stream")
        assert re.fullmatch(r"req_[0-9a-f]{32}", streamed.headers[REQUEST_ID_HEADER])
        assert streamed.headers[SESSION_HEADERS[0]] == session_id
        assert int(streamed.headers[SESSION_HEADERS[1]]) == PRICE_PER_SECOND
        assert int(streamed.headers[SESSION_HEADERS[2]]) >= int(cost), "as of its first token"
        assert [line for line in streamed.iter_lines() if line][-1] == "data: [DONE]"


def test_the_sync_clients_parse_returns_the_pydantic_object(devnet: DevnetState):
    reply = sync_client(devnet).chat.completions.parse(
        model=devnet.model_name, max_tokens=64, temperature=0, response_format=City,
        messages=[{"role": "user", "content": "Name a city by the sea, as JSON."}])
    city = reply.choices[0].message.parsed
    assert isinstance(city, City), reply.choices[0].message.content
    assert city.name


def test_a_sync_stream_the_client_closes_stops_the_model(devnet: DevnetState):
    before = provider_metric(devnet, ABORTED, model=devnet.model_name)
    stream = sync_client(devnet).chat.completions.create(
        model=devnet.model_name, stream=True, **ENDLESS)  # type: ignore[call-overload]
    seen = 0
    for chunk in stream:
        seen += bool(chunk.choices and chunk.choices[0].delta.content)
        if seen == 3:
            break
    stream.close()  # the client goes, mid-answer
    assert seen == 3
    wait_for(lambda: provider_metric(devnet, ABORTED, model=devnet.model_name) == before + 1,
             20, "the provider did not abort the closed stream's backend request")
    reply = sync_client(devnet).chat.completions.create(
        model=devnet.model_name, messages=HELLO, max_tokens=4)
    assert reply.choices[0].message.content, "the next request is served"


def test_a_value_out_of_openais_bounds_is_a_400_naming_the_field_sent_once(
        devnet: DevnetState):
    before = chat_requests(devnet)
    with pytest.raises(openai.BadRequestError) as raised:
        sync_client(devnet).chat.completions.create(
            model=devnet.model_name, messages=HELLO, max_tokens=4,
            temperature=3)
    assert raised.value.code == "invalid_parameter" and raised.value.param == "temperature"
    assert raised.value.type == "invalid_request_error"
    assert chat_requests(devnet) == before + 1, "a 400 is not retried"


# -- litellm -------------------------------------------------------------------------------


async def test_litellm_gets_an_answer(devnet: DevnetState):
    reply = await litellm.acompletion(**via_litellm(devnet), messages=HELLO, max_tokens=8)
    assert reply.choices[0].message.content
    assert 0 < reply.usage.completion_tokens <= 8
    assert reply.usage.prompt_tokens > 0


async def test_litellm_streams_an_answer(devnet: DevnetState):
    stream = await litellm.acompletion(**via_litellm(devnet), messages=HELLO, max_tokens=8,
                                       stream=True)
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream
              if chunk.choices]
    assert "".join(pieces).strip()


async def test_litellm_streamed_usage_is_the_backends_count(devnet: DevnetState):
    whole = await litellm.acompletion(**via_litellm(devnet), messages=HELLO, max_tokens=8)
    stream = await litellm.acompletion(**via_litellm(devnet), messages=HELLO, max_tokens=8,
                                       stream=True, stream_options={"include_usage": True})
    usages = [chunk.usage async for chunk in stream if getattr(chunk, "usage", None)]
    assert usages, "litellm passes the usage chunk on"
    usage = usages[-1]
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_litellm_max_completion_tokens_bounds_the_answer(devnet: DevnetState):
    reply = await litellm.acompletion(**via_litellm(devnet), messages=LONG_ANSWER,
                                      max_completion_tokens=5)
    assert reply.choices[0].finish_reason == "length"
    assert 0 < reply.usage.completion_tokens <= 5


async def test_litellm_raises_context_window_exceeded_for_a_prompt_over_the_context_once(
        devnet: DevnetState):
    before = await asyncio.to_thread(chat_requests, devnet)
    refused = await asyncio.to_thread(chat_requests, devnet, status="400")
    started = time.monotonic()
    with pytest.raises(litellm.ContextWindowExceededError) as raised:
        await litellm.acompletion(**via_litellm(devnet), messages=OVER_THE_CONTEXT,
                                  max_tokens=8)
    assert isinstance(raised.value, litellm.BadRequestError)
    assert raised.value.status_code == 400
    assert "context" in str(raised.value)
    assert time.monotonic() - started < 30, "refused promptly, not after retries"
    assert await asyncio.to_thread(chat_requests, devnet, status="400") == refused + 1
    assert await asyncio.to_thread(chat_requests, devnet) == before + 1, "never retried"


async def test_more_litellm_streams_than_the_provider_has_slots_all_complete(
        devnet: DevnetState):
    """The devnet's provider runs one prompt per session at a time and the consumer
    sends every chat on one session: the rest wait in its queue, none is refused."""
    async def streamed(i: int) -> tuple[str, str | None]:
        stream = await litellm.acompletion(
            **via_litellm(devnet), max_tokens=4, stream=True,
            messages=[{"role": "user", "content": f"Count to {i + 2}."}])
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    def waited() -> float:
        """Prompts the consumer's queue served after a wait (0 s is the bucket of those
        that found their turn free)."""
        url, model = devnet.consumer_base + "/metrics", {"model": devnet.model_name,
                                                         "outcome": "served"}
        return metric_sum(url, QUEUE_WAIT + "_count", **model) - \
            metric_sum(url, QUEUE_WAIT + "_bucket", **model, le="0.0")

    streams = 6
    refused = await asyncio.to_thread(chat_requests, devnet, status="429")
    queued = await asyncio.to_thread(waited)
    results = await asyncio.gather(*(streamed(i) for i in range(streams)))
    for text, finish in results:
        assert text and finish in ("stop", "length"), results
    assert await asyncio.to_thread(chat_requests, devnet, status="429") == refused
    assert await asyncio.to_thread(waited) >= queued + streams - 1, "they queued"


# -- langchain-openai ----------------------------------------------------------------------


def test_langchain_invoke_honours_max_tokens(devnet: DevnetState):
    reply = langchain(devnet, max_tokens=8).invoke(
        "Write a long story about a dragon and a knight.")
    assert isinstance(reply, AIMessage) and reply.content
    usage = reply.response_metadata["token_usage"]
    assert 0 < usage["completion_tokens"] <= 8, "sent as max_completion_tokens"
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] <= 8


def test_langchain_streams_chunks_that_join_into_the_answer(devnet: DevnetState):
    chunks = list(langchain(devnet, max_tokens=8).stream("Say hello in three words."))
    assert len(chunks) > 1
    assert "".join(str(chunk.content) for chunk in chunks).strip()


def test_langchain_streams_its_usage_when_asked(devnet: DevnetState):
    model = langchain(devnet, max_tokens=8, stream_usage=True)
    whole = model.invoke("Say hello in three words.")
    total: Any = None
    for chunk in model.stream("Say hello in three words."):
        total = chunk if total is None else total + chunk
    assert total is not None and total.usage_metadata is not None
    assert whole.usage_metadata is not None
    assert total.usage_metadata["input_tokens"] == whole.usage_metadata["input_tokens"]
    assert 0 < total.usage_metadata["output_tokens"] <= 8


def test_langchain_structured_output_returns_the_pydantic_object(devnet: DevnetState):
    model = langchain(devnet, max_tokens=64, temperature=0).with_structured_output(City)
    city = model.invoke("Name a city by the sea, as JSON.")
    assert isinstance(city, City) and city.name


def test_langchain_system_and_developer_messages_are_understood(devnet: DevnetState):
    reply = langchain(devnet, max_tokens=8).invoke([
        SystemMessage("You are terse."),
        SystemMessage("Answer in one word.",
                      additional_kwargs={"__openai_role__": "developer"}),
        {"role": "developer", "content": "Never use punctuation."},
        HumanMessage([{"type": "text", "text": "Name a colour."}])])
    assert isinstance(reply, AIMessage) and reply.content


def test_langchain_gets_the_context_length_error_once(devnet: DevnetState):
    before = chat_requests(devnet)
    with pytest.raises(openai.BadRequestError) as raised:
        langchain(devnet, max_tokens=8).invoke(OVER_THE_CONTEXT[0]["content"])
    assert raised.value.code == "context_length_exceeded"
    assert raised.value.param == "messages"
    assert chat_requests(devnet) == before + 1, "its default retries leave a 400 alone"


@tool
def weather(city: str) -> str:
    """Today's weather in a city."""
    return "Sunny, 22 C"


def test_langchain_a_tool_calling_turn_history_gets_an_answer(devnet: DevnetState):
    model = langchain(devnet, max_tokens=16).bind_tools([weather])
    reply = model.invoke([
        HumanMessage("What is the weather in Paris?"),
        AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Paris"},
                                   "id": "call_1", "type": "tool_call"}]),
        ToolMessage("Sunny, 22 C", tool_call_id="call_1")])
    assert isinstance(reply, AIMessage)
    assert reply.content or reply.tool_calls


def test_langchain_an_agent_loop_calls_the_tool_then_answers_with_its_result(
        devnet: DevnetState):
    """The model's own call (forced), echoed back as langchain keeps it, then an answer."""
    question = HumanMessage("What is the weather in Paris?")
    forced = langchain(devnet, max_tokens=24, temperature=0).bind_tools(
        [weather], tool_choice="weather")
    call = forced.invoke([question])
    assert isinstance(call, AIMessage) and len(call.tool_calls) == 1, call
    (tool_call,) = call.tool_calls
    assert tool_call["name"] == "weather" and isinstance(tool_call["args"], dict)
    assert call.response_metadata["finish_reason"] == "tool_calls"
    result = weather.invoke(tool_call)
    assert isinstance(result, ToolMessage)
    answer = langchain(devnet, max_tokens=16).bind_tools([weather]).invoke(
        [question, call, result])
    assert isinstance(answer, AIMessage) and (answer.content or answer.tool_calls)


def test_langchain_a_streamed_tool_call_names_the_tool_once(devnet: DevnetState):
    forced = langchain(devnet, max_tokens=16, temperature=0).bind_tools(
        [weather], tool_choice="weather")
    merged: Any = None
    for chunk in forced.stream("What is the weather in Paris?"):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None and len(merged.tool_calls) == 1, merged
    assert merged.tool_calls[0]["name"] == "weather"


def test_langchain_logprobs_come_back_when_asked(devnet: DevnetState):
    reply = langchain(devnet, max_tokens=3, logprobs=True).invoke("Say hello.")
    logprobs = reply.response_metadata.get("logprobs")
    assert logprobs is not None, "logprobs=True without top_logprobs still gives them"
    tokens = logprobs["content"]
    assert 0 < len(tokens) <= 3
    assert all(isinstance(t["logprob"], float) and t["logprob"] <= 0 for t in tokens)
