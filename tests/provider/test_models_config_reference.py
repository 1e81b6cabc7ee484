"""The reference router's models-config.json loads as it is: what we cannot serve is
skipped with a warning, what we do not use is warned about, our own format stays strict,
and an apiKey never reaches a log line or an error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from proxy_router.provider.models_config import (
    ModelsConfigError,
    is_reference_format,
    load_configured_models,
    load_models_config,
    parse_models_config,
)

SECRET = "sk-ref-do-not-log-9f2c"


def mid(n: int, prefix: str = "0x") -> str:
    return prefix + f"{n:064x}"


def reference_example() -> dict[str, Any]:
    """Shaped like the reference's models-config.json.example and docs, several apiTypes."""
    return {
        "$schema": "./internal/config/models-config-schema.json",
        "models": [
            {"modelId": mid(0), "modelName": "llama2", "apiType": "openai",
             "apiUrl": "http://localhost:8080/v1/chat/completions"},
            {"modelId": mid(1), "modelName": "inference.sdxl.txt2img.v1", "apiType": "prodia-v2",
             "apiUrl": "https://inference.prodia.com/v2/job", "apiKey": SECRET},
            {"modelId": mid(2), "modelName": "SDXL1.0-base", "apiType": "hyperbolic-sd",
             "apiUrl": "https://api.hyperbolic.xyz/v1/image/generation", "apiKey": SECRET,
             "parameters": {"cfg_scale": "5", "steps": "30"}},
            {"modelId": mid(3), "modelName": "claude-3-5-sonnet-20241022", "apiType": "claudeai",
             "apiUrl": "https://api.anthropic.com/v1/messages", "apiKey": SECRET},
            {"modelId": mid(4, prefix=""), "modelName": "gpt-4o-mini", "apiType": "openai",
             "apiUrl": "https://api.openai.com/v1/chat/completions", "apiKey": SECRET,
             "concurrentSlots": 4, "capacityPolicy": "simple"},
            {"modelId": mid(5), "modelName": "text-embedding-bge-m3", "apiType": "openai",
             "apiUrl": "https://api.venice.ai/api/v1/embeddings", "apiKey": SECRET},
            {"modelId": mid(6), "modelName": "tts-kokoro", "apiType": "openai",
             "apiUrl": "https://api.venice.ai/api/v1/audio/speech", "apiKey": SECRET},
            {"modelId": mid(7), "modelName": "inference.sd15.txt2img.v1",
             "apiType": "prodia-sd", "apiUrl": "https://api.prodia.com/v1", "apiKey": SECRET},
        ],
    }


def test_the_reference_example_loads_serving_what_it_can(tmp_path: Path) -> None:
    path = tmp_path / "models-config.json"
    path.write_text(json.dumps(reference_example(), indent=2))
    with capture_logs() as logs:
        cfg = load_models_config(path)
    assert [(m.model_id, m.model_name) for m in cfg.models] == [
        (mid(0), "llama2"), (mid(4), "gpt-4o-mini"), (mid(5), "text-embedding-bge-m3")]
    llama, gpt, embed = cfg.models
    assert llama.api_url == "http://localhost:8080/v1", "the full endpoint is cut back"
    assert (embed.model_type, embed.api_url) == ("embedding", "https://api.venice.ai/api/v1"), \
        "an /embeddings URL is an embedding model, served at its base"
    assert (llama.model_type, gpt.model_type) == ("llm", "llm")
    assert (gpt.api_key, gpt.concurrent_slots, llama.concurrent_slots) == (SECRET, 4, 8)
    assert cfg.get(mid(4, prefix="")) is gpt, "modelId without 0x is normalised"
    skipped = [(e["entry"], e["api_type"]) for e in logs
               if e["event"] == "models_config_model_skipped"]
    assert skipped == [("models[1]", "prodia-v2"), ("models[2]", "hyperbolic-sd"),
                       ("models[3]", "claudeai"), ("models[6]", "openai"),
                       ("models[7]", "prodia-sd")]
    assert all(e["log_level"] == "warning" for e in logs)
    assert SECRET not in repr(logs) and "venice.ai" not in repr(logs), "no key, no URL"
    assert SECRET not in repr(cfg)


@pytest.mark.parametrize("doc", [
    {"$schema": "x", "models": []},
    {"models": [{"modelId": mid(1), "modelName": "m", "apiUrl": "http://h/v1",
                 "capacityPolicy": "simple"}]},
    {"models": [{"modelId": mid(1), "modelName": "m", "apiUrl": "http://h/v1",
                 "parameters": {}}]},
    {mid(1): {"modelName": "m", "apiType": "openai", "apiUrl": "http://h/v1"}},
])  # fmt: skip
def test_what_makes_a_document_the_reference_format(doc: dict[str, Any]) -> None:
    assert is_reference_format(doc)


@pytest.mark.parametrize("doc", [
    {"models": [{"modelId": mid(1), "modelName": "m", "apiType": "claudeai",
                 "apiUrl": "http://h/v1"}]},
    {"models": [{"modelId": mid(1), "modelName": "m", "apiUrl": "http://h/v1", "typo": 1}]},
    {"model": []},
    {},
])  # fmt: skip
def test_ours_stays_strict(doc: dict[str, Any]) -> None:
    assert not is_reference_format(doc)
    with pytest.raises(ModelsConfigError):
        parse_models_config(doc)


def test_our_format_says_how_to_load_a_reference_file() -> None:
    doc = {"models": [{"modelId": mid(1), "modelName": "m", "apiType": "claudeai",
                       "apiUrl": "http://h/v1"}]}
    with pytest.raises(ModelsConfigError, match=r"models\[0\]\.apiType.*\$schema"):
        parse_models_config(doc)


def test_the_legacy_map_keyed_by_model_id_loads() -> None:
    doc = {
        mid(1, prefix=""): {"modelName": "llama", "apiType": "openai",
                            "apiUrl": "http://127.0.0.1:8080/v1/chat/completions",
                            "apiKey": SECRET, "concurrentSlots": 2},
        mid(2): {"modelName": "claude", "apiType": "claudeai", "apiUrl": "https://a/v1"},
    }
    with capture_logs() as logs:
        cfg = parse_models_config(doc)
    assert [(m.model_id, m.concurrent_slots) for m in cfg.models] == [(mid(1), 2)]
    assert [e["model"] for e in logs] == ["claude"]


def test_what_the_reference_has_and_we_do_not_use_is_warned_about_not_refused() -> None:
    doc = reference_example()
    doc["extraTopLevel"] = True
    doc["models"][0].update(capacityPolicy="idle_timeout", concurrentSlots=0,
                            parameters={"temperature": "0.1"}, comment="for llama")
    with capture_logs() as logs:
        cfg = parse_models_config(doc)
    llama = cfg.models[0]
    assert llama.concurrent_slots == 8, "0 (the reference's no limit) is our default"
    by_event = {e["event"]: e for e in logs if e["event"] != "models_config_model_skipped"}
    assert by_event["models_config_capacity_policy"]["capacity_policy"] == "idle_timeout"
    assert by_event["models_config_capacity_policy"]["used"] == "simple"
    ignored = [e["keys"] for e in logs if e["event"] == "models_config_keys_ignored"]
    assert ignored == [["extraTopLevel"], ["comment", "parameters", "concurrentSlots"]]


def test_a_malformed_entry_still_fails_the_file_named_as_the_file_numbers_it() -> None:
    doc = reference_example()
    doc["models"][4]["apiUrl"] = "ftp://nowhere"
    doc["models"][0]["modelId"] = "0x1234"
    with pytest.raises(ModelsConfigError) as err:
        parse_models_config(doc, source="models-config.json")
    assert [f for f, _ in err.value.issues] == ["models[0].modelId", "models[4].apiUrl"]
    assert SECRET not in str(err.value)


def test_the_same_model_with_and_without_0x_is_a_duplicate() -> None:
    doc = {"$schema": "x", "models": [
        {"modelId": mid(9), "modelName": "a", "apiType": "openai", "apiUrl": "http://h/v1"},
        {"modelId": mid(9, prefix="").upper(), "modelName": "b", "apiType": "openai",
         "apiUrl": "http://h/v1"}]}
    with pytest.raises(ModelsConfigError, match=r"models\[1\]\.modelId: duplicate"):
        parse_models_config(doc)


def test_models_config_content_feeds_the_same_loader(tmp_path: Path) -> None:
    content = SecretStr(json.dumps(reference_example(), separators=(",", ":")))
    path = tmp_path / "models-config.json"
    with capture_logs():
        cfg = load_configured_models(path, content)  # no file yet: the content
    assert [m.model_name for m in cfg.models] == ["llama2", "gpt-4o-mini",
                                                  "text-embedding-bge-m3"]
    assert not path.exists(), "never written to MODELS_CONFIG_PATH"
    path.write_text(json.dumps({"models": [
        {"modelId": mid(8), "modelName": "from-file", "apiUrl": "http://h/v1"}]}))
    assert [m.model_name for m in load_configured_models(path, content).models] == ["from-file"]
    assert load_configured_models(None, '{"models": []}').models == []
    with pytest.raises(ModelsConfigError, match="MODELS_CONFIG_CONTENT: invalid JSON"):
        load_configured_models(None, "{not json")
    with pytest.raises(ModelsConfigError, match="set MODELS_CONFIG_PATH or MODELS_CONFIG_CONTENT"):
        load_configured_models(None, None)
