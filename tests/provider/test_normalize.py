"""A chat request as llama-cpp-python's server must receive it: OpenAI's newer names and
shapes mapped, harmless bookkeeping dropped, and everything else a BAD_REQUEST that
names the field, never a key the server would silently ignore."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_router.morrpc import ErrorCode, RpcError
from proxy_router.provider.normalize import SCHEMA_BUDGET, normalize_chat

USER = {"role": "user", "content": "hi"}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}}
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
               "required": ["city"], "additionalProperties": False}


def chat(**fields: Any) -> dict[str, Any]:
    return normalize_chat({"messages": [USER], **fields})


def refused(**fields: Any) -> RpcError:
    with pytest.raises(RpcError) as err:
        chat(**fields)
    assert err.value.code == ErrorCode.BAD_REQUEST
    assert isinstance(err.value.data, dict)
    assert err.value.message.startswith(f"{err.value.data['param']}: ")
    return err.value


def param(error: RpcError) -> str:
    assert isinstance(error.data, dict)
    return str(error.data["param"])


# -- token limits ---------------------------------------------------------------------------


def test_max_completion_tokens_becomes_the_max_tokens_the_server_reads():
    body = chat(max_completion_tokens=5)
    assert body["max_tokens"] == 5 and "max_completion_tokens" not in body


def test_given_both_limits_the_smaller_holds():
    assert chat(max_tokens=9, max_completion_tokens=5)["max_tokens"] == 5
    assert chat(max_tokens=3, max_completion_tokens=5)["max_tokens"] == 3


@pytest.mark.parametrize("value", [0, -1, 2.5, "5", True])
def test_a_limit_that_is_not_a_positive_integer_is_refused(value: Any):
    # 0 or less means "no limit" to llama.cpp: a peer must not buy that by accident
    assert param(refused(max_completion_tokens=value)) == "max_completion_tokens"


# -- messages -------------------------------------------------------------------------------


def test_the_developer_role_is_the_system_role_the_server_knows():
    body = normalize_chat({"messages": [{"role": "developer", "content": "Be brief."}, USER]})
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_text_parts_are_joined_into_the_string_chat_templates_concatenate():
    body = normalize_chat({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "first"}, {"type": "text", "text": "second"}]}]})
    assert body["messages"] == [{"role": "user", "content": "first\nsecond"}]


def test_an_assistant_turn_that_only_calls_tools_gets_empty_content_and_keeps_its_calls():
    call = {"id": "c1", "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
    body = normalize_chat({"messages": [
        USER, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "22C"}]}]})
    assert body["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "c1", "content": "22C"}


def test_a_missing_content_is_empty_rather_than_absent():
    body = normalize_chat({"messages": [{"role": "assistant", "tool_calls": []}]})
    assert body["messages"][0]["content"] == ""


def test_an_image_is_refused_naming_the_part():
    error = refused(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert param(error) == "messages.0.content.1"
    assert "text only" in error.message


@pytest.mark.parametrize(("message", "field"), [
    ({"role": "robot", "content": "x"}, "messages.0.role"),
    ("hello", "messages.0"),
    ({"role": "user", "content": 5}, "messages.0.content"),
    ({"role": "user", "content": [{"type": "text", "text": 5}]}, "messages.0.content.0.text"),
    ({"role": "tool", "content": "22C"}, "messages.0.tool_call_id"),
    ({"role": "function", "content": "22C"}, "messages.0.name"),
])
def test_a_turn_the_server_cannot_take_is_refused_naming_the_field(message: Any, field: str):
    assert param(refused(messages=[message])) == field


# -- fields ---------------------------------------------------------------------------------


def test_sampling_fields_and_llama_extensions_pass_as_they_are():
    fields = {"temperature": 0.2, "top_p": 0.9, "stop": ["\n"], "seed": 7,
              "presence_penalty": 0.5, "frequency_penalty": -0.5, "logit_bias": {"42": -100},
              "logprobs": True, "top_logprobs": 2, "stream": True,
              "stream_options": {"include_usage": True}, "top_k": 20, "min_p": 0.1,
              "repeat_penalty": 1.2}
    assert chat(**fields) == {"messages": [USER], **fields}


def test_logprobs_without_a_count_still_asks_the_server_for_each_tokens_logprob():
    assert chat(logprobs=True) == {"messages": [USER], "logprobs": True, "top_logprobs": 0}
    assert chat(logprobs=False) == {"messages": [USER], "logprobs": False}


def test_bookkeeping_that_never_changes_the_answer_is_dropped():
    body = chat(user="u-1", store=True, metadata={"k": "v"}, service_tier="auto",
                parallel_tool_calls=False, prompt_cache_key="k", safety_identifier="s",
                n=1, modalities=["text"])
    assert body == {"messages": [USER]}


def test_null_means_the_default():
    assert chat(reasoning_effort=None, max_tokens=None, n=None) == {"messages": [USER]}


@pytest.mark.parametrize("field", ["reasoning_effort", "verbosity", "web_search_options",
                                   "audio", "typical_p", "guided_json"])
def test_a_field_the_server_would_ignore_is_refused_by_name(field: str):
    error = refused(**{field: "high"})
    assert param(error) == field and field in error.message


def test_every_ignored_field_is_named_at_once():
    error = refused(verbosity="low", reasoning_effort="low")
    assert "reasoning_effort, verbosity" in error.message


def test_n_above_one_is_kept_for_the_provider_to_serve_up_to_its_cap():
    assert chat(n=3)["n"] == 3 and "n" not in chat(n=1)
    assert refused(n=17).message == "n: at most 16 choices per request"
    assert param(refused(n=0)) == "n"


def test_audio_output_is_refused():
    assert param(refused(modalities=["text", "audio"])) == "modalities"


# -- structured output ----------------------------------------------------------------------


def test_json_schema_is_the_servers_json_object_with_a_schema():
    body = chat(response_format={"type": "json_schema", "json_schema": {
        "name": "city", "schema": CITY_SCHEMA, "strict": True}})
    assert body["response_format"] == {"type": "json_object", "schema": CITY_SCHEMA}


def test_json_schema_without_a_schema_asks_for_any_json_object():
    body = chat(response_format={"type": "json_schema", "json_schema": {"name": "any"}})
    assert body["response_format"] == {"type": "json_object"}


def test_text_and_json_object_pass():
    assert chat(response_format={"type": "text"})["response_format"] == {"type": "text"}
    assert chat(response_format={"type": "json_object"})["response_format"] == {
        "type": "json_object"}


@pytest.mark.parametrize("schema", [
    {"type": "nonsense"},
    {"$ref": "#/$defs/missing"},
    {"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}},
    {"type": "string", "pattern": "no anchors"},
])
def test_a_schema_that_makes_no_grammar_is_refused_not_loosened_to_any_json(schema: Any):
    error = refused(response_format={"type": "json_schema",
                                     "json_schema": {"name": "s", "schema": schema}})
    assert param(error) == "response_format.json_schema.schema"
    assert "grammar" in error.message


@pytest.mark.parametrize("schema", [
    {"type": "string", "maxLength": 10**8},
    {"type": "array", "items": {"type": "string"}, "minItems": SCHEMA_BUDGET + 1},
    {"type": "string", "pattern": "^(a{1000}){1000}$"},
    {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 1000}
                                      for i in range(30)}},
])
def test_a_schema_whose_grammar_would_explode_is_refused_before_it_is_built(schema: Any):
    error = refused(response_format={"type": "json_object", "schema": schema})
    assert param(error) == "response_format.schema" and "repetitions" in error.message


def test_an_unknown_response_format_is_refused():
    assert param(refused(response_format={"type": "xml"})) == "response_format.type"


# -- tools ----------------------------------------------------------------------------------


def test_required_with_one_tool_forces_that_tool():
    body = chat(tools=[WEATHER_TOOL], tool_choice="required")
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}


def test_required_among_several_tools_is_refused():
    other = {"type": "function", "function": {"name": "time"}}
    assert param(refused(tools=[WEATHER_TOOL, other], tool_choice="required")) == \
        "tool_choice"


def test_a_named_tool_must_exist():
    choice = {"type": "function", "function": {"name": "nope"}}
    assert param(refused(tools=[WEATHER_TOOL], tool_choice=choice)) == \
        "tool_choice.function.name"


def test_a_function_without_parameters_takes_none():
    body = chat(tools=[{"type": "function", "function": {"name": "now"}}])
    assert body["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}


def test_a_forced_tools_parameters_must_make_a_grammar():
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}
    error = refused(tools=[tool], tool_choice={"type": "function", "function": {"name": "f"}})
    assert param(error) == "tools.0.function.parameters"


def test_only_function_tools_are_supported():
    assert param(refused(tools=[{"type": "custom", "custom": {"name": "x"}}])) == "tools.0"


def test_a_legacy_function_call_must_name_a_function():
    functions = [{"name": "weather", "parameters": WEATHER_TOOL["function"]["parameters"]}]
    assert chat(functions=functions, function_call={"name": "weather"})["function_call"] == \
        {"name": "weather"}
    assert param(refused(functions=functions, function_call={"name": "nope"})) == \
        "function_call"


# -- any body -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3), max_leaves=12)
FIELDS = ["messages", "max_tokens", "max_completion_tokens", "n", "response_format",
          "tools", "tool_choice", "functions", "function_call", "modalities", "stream"]
PARTS = {"role": st.sampled_from(["user", "developer", "assistant", "tool", "function"])
         | json_values,
         "content": json_values, "tool_call_id": json_values, "name": json_values}


@settings(max_examples=1000, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(FIELDS), json_values | st.lists(
    st.fixed_dictionaries({"name": json_values, "type": st.just("function")}), max_size=2),
    max_size=4),
       message=st.fixed_dictionaries({}, optional=PARTS))
def test_any_body_is_mapped_or_a_bad_request_never_another_error(
        fields: dict[str, Any], message: dict[str, Any]):
    fields.setdefault("messages", [message])
    try:
        body = normalize_chat(fields)
    except RpcError as exc:
        assert exc.code == ErrorCode.BAD_REQUEST
    else:
        assert all(isinstance(m["content"], str) for m in body.get("messages", []))
