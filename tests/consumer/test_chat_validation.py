"""The consumer holds clients to OpenAI's chat contract: strict types, OpenAI's bounds,
a 400 in OpenAI's shape naming the field, and a clear refusal of what is valid at
OpenAI but not served here (``n`` above 16). What passes goes to the provider as sent."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy_router.consumer.errors import ApiError
from proxy_router.consumer.schemas import ChatRequest, parse_body

USER = {"role": "user", "content": "hi"}
CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


def parse(**fields: Any) -> ChatRequest:
    return parse_body(ChatRequest, json.dumps({"model": "m", "messages": [USER],
                                               **fields}).encode())


def refused(**fields: Any) -> ApiError:
    with pytest.raises(ApiError) as err:
        parse(**fields)
    assert err.value.status == 400
    error = err.value.body()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return err.value


# -- strict types ---------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("stream", "yes"), ("stream", 1), ("n", "1"), ("max_tokens", 5.5),
    ("max_completion_tokens", "5"), ("temperature", "0.5"), ("logprobs", "true"),
    ("seed", 1.5), ("user", 7), ("stop", 3), ("stream_options", {"include_usage": "yes"}),
])
def test_a_value_of_the_wrong_type_is_a_400_never_coerced(field: str, value: Any):
    error = refused(**{field: value})
    assert error.code == "invalid_parameter"
    assert error.param is not None and error.param.startswith(field)


def test_an_integer_is_a_valid_number_and_a_whole_number_a_valid_integer():
    # as JSON Schema has it, so the OpenAPI document and the validation agree
    assert parse(temperature=1).temperature == 1.0
    assert parse(max_tokens=5.0).upstream_body()["max_tokens"] == 5


# -- OpenAI's bounds ------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("n", 0), ("max_tokens", 0), ("max_completion_tokens", 0), ("temperature", 2.1),
    ("temperature", -0.1), ("top_p", 1.5), ("frequency_penalty", -2.5),
    ("presence_penalty", 2.5), ("top_logprobs", 21), ("stop", ["a", "b", "c", "d", "e"]),
    ("logit_bias", {"42": 101}), ("logit_bias", {"not-a-token": 1}),
    ("tools", [WEATHER] * 129), ("metadata", {f"k{i}": "v" for i in range(17)}),
    ("service_tier", "fastest"), ("reasoning_effort", "extreme"),
])
def test_a_value_out_of_openais_bounds_is_a_400_naming_the_field(field: str, value: Any):
    error = refused(**{field: value})
    assert error.param is not None and error.param.startswith(field)


def test_more_than_sixteen_choices_are_refused_clearly():
    error = refused(n=17)
    assert (error.code, error.param, error.message) == (
        "unsupported_value", "n", "n: at most 16 choices per request are served here")


def test_several_choices_go_to_the_provider():
    assert parse(n=2).upstream_body()["n"] == 2
    assert parse(n=16).n == 16


def test_a_stop_string_is_not_bounded_like_a_list_of_them():
    assert parse(stop="a stop sequence longer than four").stop


def test_n_of_one_is_fine():
    assert parse(n=1).n == 1


# -- fields that depend on each other -------------------------------------------------------


def test_top_logprobs_needs_logprobs():
    error = refused(top_logprobs=2)
    assert (error.param, error.code) == ("top_logprobs", "invalid_value")
    assert parse(logprobs=True, top_logprobs=2).top_logprobs == 2


def test_a_tool_choice_must_name_a_given_tool():
    assert refused(tool_choice="required").param == "tool_choice"
    assert refused(tools=[WEATHER], tool_choice={
        "type": "function", "function": {"name": "time"}}).param == "tool_choice"
    assert parse(tools=[WEATHER], tool_choice="required").tool_choice == "required"


def test_a_function_call_must_name_a_given_function():
    assert refused(function_call={"name": "weather"}).param == "function_call"


# -- messages -------------------------------------------------------------------------------


@pytest.mark.parametrize("message", [
    {"role": "developer", "content": "Be brief."},
    {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
    {"role": "user", "content": [{"type": "text", "text": "look"},
                                 {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
    {"role": "tool", "tool_call_id": "c1", "content": "22C"},
    {"role": "function", "name": "weather", "content": "22C"},
])
def test_every_message_shape_openai_documents_is_accepted(message: dict[str, Any]):
    assert parse(messages=[USER, message])


@pytest.mark.parametrize(("message", "param"), [
    ({"role": "robot", "content": "x"}, "messages.0.role"),
    ({"content": "x"}, "messages.0.role"),
    ({"role": "user"}, "messages.0.content"),
    ({"role": "user", "content": 5}, "messages.0.content"),
    ({"role": "user", "content": [{"type": "video"}]}, "messages.0.content.0.type"),
    ({"role": "user", "content": [{"type": "text"}]}, "messages.0.content.0.text"),
    ({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]},
     "messages.0.content.0.type"),
    ({"role": "assistant", "content": None}, "messages.0.content"),
    ({"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                           "function": {"name": "f"}}]},
     "messages.0.tool_calls.0.function.arguments"),
    ({"role": "tool", "content": "22C"}, "messages.0.tool_call_id"),
])
def test_a_malformed_message_is_a_400_naming_the_field_as_the_client_sent_it(
        message: dict[str, Any], param: str):
    error = refused(messages=[message])
    assert error.param == param
    assert error.message.startswith(f"{param}: ")


# -- structured output ----------------------------------------------------------------------


def test_a_json_schema_format_is_checked_and_forwarded_with_its_schema():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    body = parse(response_format={"type": "json_schema", "json_schema": {
        "name": "city", "schema": schema, "strict": True}}).upstream_body()
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "city", "schema": schema, "strict": True}}


@pytest.mark.parametrize(("response_format", "param"), [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "has space"}},
     "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "s", "schema": "{}"}},
     "response_format.json_schema.schema"),
])
def test_a_malformed_response_format_is_a_400(response_format: dict[str, Any], param: str):
    assert refused(response_format=response_format).param == param


# -- what the provider receives -------------------------------------------------------------


def test_the_provider_gets_the_body_as_sent_without_routing_fields_or_nulls():
    body = parse(max_completion_tokens=5, temperature=0.5, stop=None, top_k=40, stream=True,
                 stream_options={"include_usage": True}).upstream_body()
    assert body == {"messages": [USER], "stream": True, "max_completion_tokens": 5,
                    "temperature": 0.5, "top_k": 40}


def test_keys_openai_does_not_document_are_left_for_the_provider_to_judge():
    assert parse(mirostat_mode=2).upstream_body()["mirostat_mode"] == 2


def test_documented_fields_the_provider_may_refuse_still_reach_it_checked():
    assert parse(reasoning_effort="low").upstream_body()["reasoning_effort"] == "low"
    assert refused(audio={"voice": "alloy"}).param == "audio.format"


def test_an_assistant_turn_keeps_its_tool_calls():
    body = parse(messages=[USER, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                           {"role": "tool", "tool_call_id": "c1", "content": "22C"}]
                 ).upstream_body()
    assert body["messages"][1] == {"role": "assistant", "tool_calls": [CALL]}
