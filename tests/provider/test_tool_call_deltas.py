"""A streamed tool call is named once, in its first delta, as OpenAI streams it:
llama-cpp-python repeats the id, type and name in every delta, and clients that merge
deltas would read the name "weatherweather..."."""

from __future__ import annotations

import json
from typing import Any

from proxy_router.provider.backend import _EventBatcher


def delta(**fields: Any) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1,
                       "model": "m", "choices": [{"index": 0, "delta": fields,
                                                  "finish_reason": None}]},
                      separators=(",", ":")).encode()


def call(arguments: str, index: int = 0) -> dict[str, Any]:
    return {"index": index, "id": f"call_{index}", "type": "function",
            "function": {"name": f"tool{index}", "arguments": arguments}}


def relayed(*payloads: bytes) -> list[dict[str, Any]]:
    batcher = _EventBatcher(None)
    return [json.loads(p) for batch in batcher.batches(list(payloads)) for p in batch]


def test_each_call_keeps_its_id_type_and_name_in_its_first_delta_only():
    out = relayed(delta(role="assistant", content=None, tool_calls=[call('{"ci')]),
                  delta(tool_calls=[call('ty": "Paris"}')]),
                  delta(tool_calls=[call("{}", index=1)]),
                  delta(tool_calls=[call("", index=1)]))
    calls = [event["choices"][0]["delta"]["tool_calls"][0] for event in out]
    assert calls[0] == call('{"ci') and calls[2] == call("{}", index=1)
    assert calls[1] == {"index": 0, "function": {"arguments": 'ty": "Paris"}'}}
    assert calls[3] == {"index": 1, "function": {"arguments": ""}}


def test_a_legacy_function_call_is_named_once_too():
    out = relayed(delta(function_call={"name": "f", "arguments": "{"}),
                  delta(function_call={"name": "f", "arguments": "}"}))
    assert [e["choices"][0]["delta"]["function_call"] for e in out] == [
        {"name": "f", "arguments": "{"}, {"arguments": "}"}]


def test_text_that_mentions_a_call_is_relayed_byte_for_byte():
    token = delta(content="my_call")
    batcher = _EventBatcher(None)
    assert [p for batch in batcher.batches([delta(role="assistant", content=""), token])
            for p in batch][1] == token
