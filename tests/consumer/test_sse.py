"""The consumer's handling of SSE stream chunks: pass-through, usage stripping, non-SSE refused."""

from __future__ import annotations

import json

import pytest

from proxy_router.consumer.sse import USAGE_KEY, checked_sse, filter_usage, first_event
from proxy_router.morrpc.errors import ErrorCode, RpcError

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def ev(**fields: object) -> bytes:
    return b"data: " + json.dumps({**HEAD, **fields}, separators=(",", ":")).encode() + b"\n\n"


TOKEN = ev(choices=[{"index": 0, "delta": {"content": "x"}, "finish_reason": None}])
FINISH = ev(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
USAGE_ONLY = ev(choices=[], usage={"prompt_tokens": 2, "completion_tokens": 3})
USAGE_WITH_CHOICE = ev(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}],
                       usage={"prompt_tokens": 2, "completion_tokens": 3})
USAGE_NULL = ev(choices=[{"index": 0, "delta": {"content": "y"}}], usage=None)


def test_sse_chunks_pass_through_and_anything_else_is_a_provider_error() -> None:
    assert checked_sse(TOKEN + TOKEN) == TOKEN + TOKEN
    with pytest.raises(RpcError) as info:
        checked_sse(TOKEN[6:-2])  # a bare JSON event: not the protocol's chunk format
    assert info.value.code == ErrorCode.BACKEND_ERROR


def test_a_usage_only_event_is_dropped_when_the_client_did_not_ask() -> None:
    chunk = TOKEN + FINISH + USAGE_ONLY
    assert USAGE_KEY in chunk
    assert filter_usage(chunk, keep_usage_only=False) == (TOKEN + FINISH, True)
    assert filter_usage(chunk, keep_usage_only=True) == (chunk, True)


def test_a_chunk_of_only_the_usage_event_becomes_empty() -> None:
    assert filter_usage(USAGE_ONLY, keep_usage_only=False) == (b"", True)


def test_usage_next_to_choices_is_kept_and_usage_null_is_not_usage() -> None:
    assert filter_usage(USAGE_WITH_CHOICE, keep_usage_only=False) == (USAGE_WITH_CHOICE, True)
    assert filter_usage(USAGE_NULL + TOKEN, keep_usage_only=False) == (USAGE_NULL + TOKEN, False)


def test_the_word_usage_in_the_text_is_not_an_event_to_drop() -> None:
    chunk = ev(choices=[{"index": 0, "delta": {"content": '"usage"'}}])
    assert USAGE_KEY not in chunk  # the quotes are escaped in JSON
    spaced = b'data: {"choices": [], "usage": {"prompt_tokens": 1}}\n\n'
    assert filter_usage(TOKEN + spaced, keep_usage_only=False) == (TOKEN, True)


def test_first_event_reads_the_ids_for_a_synthesised_usage_chunk() -> None:
    assert first_event(TOKEN + FINISH)["id"] == "chatcmpl-1"
    assert first_event(TOKEN)["created"] == 7
    assert first_event(b"data: [1]\n\n") == {}
