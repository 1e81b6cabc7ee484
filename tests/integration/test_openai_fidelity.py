"""What popular OpenAI clients send works through a paid session with the real model,
and what cannot be served fails as OpenAI fails: a 400 in its shape naming the field
(issue 12, items 1, 4 and 9)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI, BadRequestError
from pydantic import BaseModel, Field

from proxy_router.dev.devnet import DevnetState
from tests.integration.helpers import error_of

pytestmark = pytest.mark.integration

LONG_ANSWER = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]


def openai_client(state: DevnetState) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=state.consumer_url, api_key="local", max_retries=0)


async def raw_chat(state: DevnetState, **body: Any) -> tuple[int, dict[str, Any]]:
    """A body the SDK would not send as it is (wrong types)."""
    body = {"model": state.model_name, "messages": LONG_ANSWER, "max_tokens": 4, **body}
    async with aiohttp.ClientSession() as http, http.post(
            f"{state.consumer_url}/chat/completions", json=body,
            headers=state.auth()) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_max_completion_tokens_bounds_what_is_generated_and_paid_for(
        devnet: DevnetState):
    reply = await openai_client(devnet).chat.completions.create(
        model=devnet.model_name, messages=LONG_ANSWER, max_completion_tokens=5)
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 5
    assert reply.choices[0].finish_reason == "length"


async def test_the_developer_role_is_understood(devnet: DevnetState):
    reply = await openai_client(devnet).chat.completions.create(
        model=devnet.model_name, max_tokens=8, messages=[
            {"role": "developer", "content": "You answer in one word."},
            {"role": "user", "content": "Name a colour."}])
    assert reply.choices[0].message.content


async def test_content_given_as_text_parts_is_understood(devnet: DevnetState):
    reply = await openai_client(devnet).chat.completions.create(
        model=devnet.model_name, max_tokens=8, messages=[
            {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
            {"role": "user", "content": [{"type": "text", "text": "Say hello"},
                                         {"type": "text", "text": "in three words."}]}])
    assert reply.choices[0].message.content


class City(BaseModel):
    name: str = Field(max_length=24)
    coastal: bool


async def test_a_json_schema_answer_parses_and_matches_the_schema(devnet: DevnetState):
    reply = await openai_client(devnet).chat.completions.parse(
        model=devnet.model_name, max_tokens=64, response_format=City, temperature=0,
        messages=[{"role": "user", "content": "Name a city by the sea, as JSON."}])
    city = reply.choices[0].message.parsed
    assert isinstance(city, City)
    raw = json.loads(reply.choices[0].message.content or "")
    assert set(raw) == {"name", "coastal"} and isinstance(raw["coastal"], bool)


async def test_a_turn_that_called_a_tool_and_the_tools_answer_are_answered(
        devnet: DevnetState):
    reply = await openai_client(devnet).chat.completions.create(
        model=devnet.model_name, max_tokens=16,
        tools=[{"type": "function", "function": {
            "name": "weather", "description": "today's weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}}],
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 22 C"}])
    assert reply.choices[0].message.content


@pytest.mark.parametrize(("field", "value"), [("stream", "yes"), ("n", 0)])
async def test_loose_types_and_values_are_a_400_in_openais_shape(
        devnet: DevnetState, field: str, value: Any):
    status, body = await raw_chat(devnet, **{field: value})
    assert status == 400
    error = error_of(body, "invalid_parameter")
    assert error["type"] == "invalid_request_error" and error["param"] == field


async def test_more_choices_than_served_are_refused_clearly(devnet: DevnetState):
    with pytest.raises(BadRequestError) as err:
        await openai_client(devnet).chat.completions.create(
            model=devnet.model_name, messages=LONG_ANSWER, max_tokens=4, n=17)
    assert err.value.body == {"message": "n: at most 16 choices per request are served here",
                              "type": "invalid_request_error", "param": "n",
                              "code": "unsupported_value"}


@pytest.mark.parametrize("extra", [{"reasoning_effort": "high"}, {"typical_p": 0.5}],
                         ids=["openai-field", "vendor-field"])
async def test_a_field_the_model_server_would_ignore_is_a_400_naming_it(
        devnet: DevnetState, extra: dict[str, Any]):
    with pytest.raises(BadRequestError) as err:
        await openai_client(devnet).chat.completions.create(
            model=devnet.model_name, messages=LONG_ANSWER, max_tokens=4, extra_body=extra)
    error = err.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    (field,) = extra
    assert field in error["message"] and "/" not in error["message"]
