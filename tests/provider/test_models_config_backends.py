"""``apiUrl`` as a list: several backends behind one model, each with the model's
``concurrentSlots``; a single string works as before, in both formats."""

from __future__ import annotations

from typing import Any

import pytest

from proxy_router.provider.models_config import ModelsConfigError, parse_models_config

MID = "0x" + "ab" * 32


def ours(api_url: Any, **extra: Any) -> dict[str, Any]:
    return {"models": [{"modelId": MID, "modelName": "m", "apiUrl": api_url, **extra}]}


def test_a_list_of_urls_is_several_backends_each_with_the_slots() -> None:
    cfg = parse_models_config(ours(["http://gpu1:8000/v1/", "http://gpu2:8000/v1/chat/completions"],
                                   concurrentSlots=64))
    (model,) = cfg.models
    assert model.api_urls == ("http://gpu1:8000/v1", "http://gpu2:8000/v1")
    assert model.api_url == "http://gpu1:8000/v1"
    assert (model.concurrent_slots, model.total_slots) == (64, 128)
    assert cfg.slots_by_model() == {MID: 128}


def test_a_single_url_is_one_backend_as_before() -> None:
    (model,) = parse_models_config(ours("http://h:1/v1", concurrentSlots=3)).models
    assert (model.api_urls, model.api_url, model.total_slots) == (("http://h:1/v1",),
                                                                   "http://h:1/v1", 3)


@pytest.mark.parametrize(("api_url", "says"), [
    ([], "at least one URL"),
    (["http://h:1/v1", "ftp://nowhere"], "[1]: must be an http(s) URL"),
    (["http://h:1/v1", "http://h:1/v1/"], "the same URL twice"),
    (["http://h:1/v1", 7], "[1]: must be an http(s) URL"),
    ("not a url", "must be an http(s) URL"),
])
def test_bad_url_lists_name_the_field(api_url: Any, says: str) -> None:
    with pytest.raises(ModelsConfigError) as err:
        parse_models_config(ours(api_url))
    assert err.value.field == "models[0].apiUrl"
    assert says in str(err.value)


def test_a_gguf_model_still_takes_no_url(tmp_path: Any) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    doc = {"models": [{"modelId": MID, "modelName": "m", "gguf": str(gguf)}]}
    (model,) = parse_models_config(doc).models
    assert (model.api_urls, model.total_slots, model.embedded) == ((), 8, True)
    with pytest.raises(ModelsConfigError):
        parse_models_config({"models": [{**doc["models"][0], "apiUrl": ["http://h:1/v1"]}]})


def test_the_reference_format_takes_a_list_too() -> None:
    doc = {"$schema": "./models-config-schema.json", "models": [
        {"modelId": MID, "modelName": "chat", "apiType": "openai",
         "apiUrl": ["http://a:1/v1/chat/completions", "http://b:1/v1/chat/completions"],
         "concurrentSlots": 4, "capacityPolicy": "simple"},
        {"modelId": "0x" + "cd" * 32, "modelName": "embed", "apiType": "openai",
         "apiUrl": ["http://a:2/v1/embeddings", "http://b:2/v1/embeddings"]},
        {"modelId": "0x" + "ef" * 32, "modelName": "speech", "apiType": "openai",
         "apiUrl": ["http://a:3/v1/chat/completions", "http://b:3/v1/audio/speech"]}]}
    chat, embed = parse_models_config(doc).models  # the audio entry is skipped
    assert chat.api_urls == ("http://a:1/v1", "http://b:1/v1") and chat.total_slots == 8
    assert embed.model_type == "embedding"
    assert embed.api_urls == ("http://a:2/v1", "http://b:2/v1")
