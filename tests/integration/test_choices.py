"""Several choices (``n``) through a paid session with the real model: the provider runs
the prompt once per choice on the model's slots and merges the answers, as OpenAI
gives them (indexes 0..n-1, each with its finish; one usage, the prompt once)."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI

from proxy_router.dev.devnet import DevnetState

pytestmark = pytest.mark.integration

STORY = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]
TOKENS = 8
"""Each choice is cut at this length (the story is longer): its count is known."""


def openai_client(state: DevnetState) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=state.consumer_url, api_key="local", max_retries=0)


async def test_three_choices_come_whole_indexed_in_order(devnet: DevnetState):
    reply = await openai_client(devnet).chat.completions.create(
        model=devnet.model_name, messages=STORY, max_tokens=TOKENS, n=3)
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    assert all(choice.message.content for choice in reply.choices)
    assert [choice.finish_reason for choice in reply.choices] == ["length"] * 3
    assert reply.usage is not None and reply.usage.completion_tokens == 3 * TOKENS


async def test_three_choices_stream_each_to_its_finish_with_the_usage_summed(
        devnet: DevnetState):
    stream = await openai_client(devnet).chat.completions.create(
        model=devnet.model_name, messages=STORY, max_tokens=TOKENS, n=3, stream=True,
        stream_options={"include_usage": True})
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    usages = []
    async for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert sorted(texts) == [0, 1, 2] and all(texts.values())
    assert finishes == {0: "length", 1: "length", 2: "length"}
    (usage,) = usages
    assert usage.completion_tokens == 3 * TOKENS, "the choices' tokens summed"
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    single = await openai_client(devnet).chat.completions.create(
        model=devnet.model_name, messages=STORY, max_tokens=1)
    assert single.usage is not None and usage.prompt_tokens == single.usage.prompt_tokens, \
        "the prompt is counted once"
