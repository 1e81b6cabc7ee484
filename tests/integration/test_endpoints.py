"""The OpenAI routes beyond chat, each through a paid session with the real model
(issue 12, item 3): `/v1/embeddings` (RAG stacks), `/v1/completions` (the legacy
`text_completion`, llama-index's `complete`) and `/v1/models/{id}` (`models.retrieve`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError

from proxy_router.chain.encoding import Receipt
from proxy_router.dev.anvil import dev_key
from proxy_router.dev.devnet import USER, DevnetState
from proxy_router.morrpc import RpcClient, Signer
from tests.integration.helpers import close_session, request

pytestmark = pytest.mark.integration


def openai_client(state: DevnetState) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=state.consumer_url, api_key="local", max_retries=0)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # unit vectors


async def open_on(state: DevnetState, model_id: str) -> str:
    status, body = await request(
        "POST", f"{state.consumer_base}/blockchain/models/{model_id}/session",
        json_body={"sessionDuration": 300}, headers=state.auth())
    assert status == 201, body
    return str(body["sessionId"])


async def receipt_of(state: DevnetState, session_id: str) -> Receipt:
    async with RpcClient(state.provider_endpoint, Signer.from_key(dev_key(USER)),
                         state.provider_address) as rpc:
        report = await rpc.call("session.report", {"sessionId": session_id})
    return Receipt.decode(bytes.fromhex(report["receipt"][2:]))


def test_the_devnet_names_its_embedding_model_in_its_state(devnet: DevnetState):
    state = json.loads((Path(devnet.root) / "state.json").read_text())
    assert state["embedding_model_name"] == devnet.embedding_model_name != ""
    assert state["embedding_model_id"].startswith("0x") and state["embedding_bid_id"]


async def test_embeddings_are_unit_vectors_that_place_like_texts_closer(devnet: DevnetState):
    texts = ["The cat sat on the mat.", "A cat is sitting on a rug.",
             "Quarterly revenue grew by four percent."]
    reply = await openai_client(devnet).embeddings.create(
        model=devnet.embedding_model_name, input=texts)  # the SDK asks for base64
    vectors = [item.embedding for item in reply.data]
    assert [item.index for item in reply.data] == [0, 1, 2]
    assert {len(v) for v in vectors} == {576}, "SmolLM2-135M's hidden size"
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > len(texts)


async def test_embeddings_in_floats_and_in_base64_are_the_same_vectors(devnet: DevnetState):
    body = {"model": devnet.embedding_model_name, "input": "hello world"}
    url = f"{devnet.consumer_url}/embeddings"
    status, floats = await request("POST", url, json_body=body, headers=devnet.auth())
    assert status == 200, floats
    reply = await openai_client(devnet).embeddings.create(**body)  # base64, decoded by the SDK
    assert floats["data"][0]["embedding"] == pytest.approx(reply.data[0].embedding, abs=1e-6)
    assert floats["data"][0]["embedding"] == pytest.approx(
        (await openai_client(devnet).embeddings.create(**body)).data[0].embedding,
        abs=1e-6), "the same text embeds the same"


async def test_token_arrays_embed_and_are_counted(devnet: DevnetState):
    reply = await openai_client(devnet).embeddings.create(
        model=devnet.embedding_model_name, input=[[1, 2, 3], [4, 5]])
    assert len(reply.data) == 2 and reply.usage.prompt_tokens == 5


async def test_embeddings_are_paid_from_a_session_on_the_embedding_model(devnet: DevnetState):
    session_id = await open_on(devnet, devnet.embedding_model_id)
    try:
        raw = await openai_client(devnet).embeddings.with_raw_response.create(
            model=devnet.embedding_model_name, input=["one", "two words"],
            extra_headers={"session_id": session_id})
        reply = raw.parse()
        receipt = await receipt_of(devnet, session_id)
    finally:
        settlement = await close_session(devnet, session_id)
    assert raw.headers["x-session-id"] == session_id
    assert int(raw.headers["x-session-price-per-second"]) > 0
    assert (receipt.prompt_tokens, receipt.completion_tokens) == (reply.usage.prompt_tokens, 0)
    assert int(settlement["providerEarned"]) + int(settlement["userRefund"]) \
        == int(settlement["stake"]), "to the wei"


async def test_an_input_over_the_context_is_a_400_naming_it(devnet: DevnetState):
    with pytest.raises(BadRequestError) as caught:
        await openai_client(devnet).embeddings.create(
            model=devnet.embedding_model_name, input="word " * 3000)
    assert caught.value.status_code == 400
    assert caught.value.code == "context_length_exceeded"


async def test_each_route_refuses_the_other_kind_of_model(devnet: DevnetState):
    client = openai_client(devnet)
    with pytest.raises(BadRequestError) as chat_to_embedder:
        await client.chat.completions.create(
            model=devnet.embedding_model_name, max_tokens=4,
            messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(BadRequestError) as embed_from_chat:
        await client.embeddings.create(model=devnet.model_name, input="hi")
    for caught in (chat_to_embedder, embed_from_chat):
        assert (caught.value.code, caught.value.param) == ("model_not_supported", "model")


async def test_a_legacy_completion_continues_the_prompt(devnet: DevnetState):
    reply = await openai_client(devnet).completions.create(
        model=devnet.model_name, prompt="The capital of France is", max_tokens=6)
    assert reply.object == "text_completion"
    assert reply.choices[0].text and reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 6
    assert reply.usage.prompt_tokens == 5, "counted by the backend, not estimated"


async def test_a_streamed_legacy_completion_counts_as_the_whole_one(devnet: DevnetState):
    client = openai_client(devnet)
    stream = await client.completions.create(
        model=devnet.model_name, prompt="Once upon a time", max_tokens=6, stream=True,
        stream_options={"include_usage": True})
    chunks: list[Any] = [chunk async for chunk in stream]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None]
    whole = await client.completions.create(
        model=devnet.model_name, prompt="Once upon a time", max_tokens=6)
    assert text and len(usage) == 1
    assert usage[0].prompt_tokens == whole.usage.prompt_tokens
    assert usage[0].completion_tokens == len([c for c in chunks if c.choices
                                               and c.choices[0].text])


async def test_a_legacy_completion_without_max_tokens_stops_at_openais_default(
        devnet: DevnetState):
    reply = await openai_client(devnet).completions.create(
        model=devnet.model_name, prompt="Write a long story about a dragon.")
    assert reply.usage is not None and reply.usage.completion_tokens <= 16


async def test_several_prompts_in_one_legacy_request_are_refused_by_name(devnet: DevnetState):
    with pytest.raises(BadRequestError) as caught:
        await openai_client(devnet).completions.create(
            model=devnet.model_name, prompt=["one", "two"], max_tokens=2)
    assert caught.value.param == "prompt"


async def test_models_retrieve_finds_a_model_by_name_or_id(devnet: DevnetState):
    client = openai_client(devnet)
    by_name = await client.models.retrieve(devnet.model_name)
    by_id = await client.models.retrieve(devnet.embedding_model_id)
    assert by_name.id == devnet.model_name and by_name.object == "model"
    assert by_id.id == devnet.embedding_model_name
    assert "embedding" in by_id.model_extra["tags"]
    with pytest.raises(NotFoundError) as caught:
        await client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"
