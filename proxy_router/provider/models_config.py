"""`models-config.json`: which on-chain models this provider serves, and how.

Each entry maps an on-chain `modelId` to an OpenAI-compatible backend: either an
`apiUrl` of a server that already runs, or a `gguf` file the provider launches
itself with llama-cpp-python. Unknown keys are rejected so that a typo in, say,
`concurrentSlots` cannot silently fall back to the default capacity.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

DEFAULT_CONCURRENT_SLOTS = 8
_MODEL_ID_RE = re.compile(r"0x[0-9a-f]{64}")
_CHAT_SUFFIX = "/chat/completions"
# The embedded server sets these itself; letting llamaArgs override them would
# point the provider at a different model or port than it believes it runs.
_RESERVED_LLAMA_ARGS = frozenset({"model", "model_alias", "host", "port", "config_file"})


class ModelsConfigError(ValueError):
    """The models config is unusable; names the file and every offending field."""

    def __init__(self, source: str, issues: list[tuple[str, str]]) -> None:
        self.source = source
        self.issues = issues
        self.field = issues[0][0] if issues else ""
        lines = [f"{source}: {f}: {msg}" if f else f"{source}: {msg}" for f, msg in issues]
        super().__init__("\n".join(lines))


def normalize_model_id(model_id: str) -> str:
    """Canonical form of an on-chain id: lower-case hex with `0x` (ids compare as bytes)."""
    mid = model_id.strip().lower()
    return mid if mid.startswith("0x") else "0x" + mid


def _conflict(field: str, message: str) -> PydanticCustomError:
    # ctx["field"] lets the error formatter point at the field, not just the entry.
    return PydanticCustomError("models_config", message, {"field": field})


class LlamaArgs(BaseModel):
    """Options for an embedded llama.cpp server; extra keys become `--key value` flags."""

    model_config = ConfigDict(extra="allow", frozen=True)

    n_ctx: int = Field(default=2048, ge=16)
    n_threads: int | None = Field(default=None, ge=-1)

    @model_validator(mode="after")
    def _check_extras(self) -> LlamaArgs:
        for key, value in (self.model_extra or {}).items():
            if key in _RESERVED_LLAMA_ARGS:
                raise _conflict(key, f"{key!r} is set by the provider and cannot be overridden")
            if not key.isidentifier():
                raise _conflict(key, "must be a llama_cpp.server option name")
            if not isinstance(value, str | int | float | bool):
                raise _conflict(key, "must be a string, number or boolean")
        return self

    def extra_args(self) -> dict[str, str | int | float | bool]:
        """The options beyond n_ctx/n_threads, passed through to llama_cpp.server."""
        return dict(self.model_extra or {})


class ModelConfig(BaseModel):
    """One served model. Exactly one of `apiUrl` (external server) or `gguf` (embedded)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    model_id: str = Field(alias="modelId")
    model_name: str = Field(alias="modelName", min_length=1)
    api_type: Literal["openai"] = Field(default="openai", alias="apiType")
    api_url: str | None = Field(default=None, alias="apiUrl")
    api_key: str | None = Field(default=None, alias="apiKey", repr=False)
    concurrent_slots: int = Field(default=DEFAULT_CONCURRENT_SLOTS, alias="concurrentSlots", ge=1)
    gguf: Path | None = None
    llama_args: LlamaArgs | None = Field(default=None, alias="llamaArgs")

    @field_validator("model_id", mode="before")
    @classmethod
    def _check_model_id(cls, value: object) -> str:
        if not isinstance(value, str) or not _MODEL_ID_RE.fullmatch(value.strip().lower()):
            raise PydanticCustomError(
                "model_id", "must be 0x followed by 64 hex digits (the on-chain model id)"
            )
        return normalize_model_id(value)

    @field_validator("api_url")
    @classmethod
    def _normalize_api_url(cls, value: str | None) -> str | None:
        """Store the base URL; a full `.../chat/completions` URL (reference style) is cut back."""
        if value is None:
            return None
        url = value.strip().rstrip("/")
        if url.endswith(_CHAT_SUFFIX):
            url = url[: -len(_CHAT_SUFFIX)]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PydanticCustomError(
                "api_url", "must be an http(s) URL such as http://127.0.0.1:8080/v1"
            )
        return url

    @field_validator("gguf")
    @classmethod
    def _resolve_gguf(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """Relative paths are relative to the config file, not to the working directory."""
        if value is None:
            return None
        base = (info.context or {}).get("base_dir")
        path = value.expanduser()
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        if not path.is_file():
            raise PydanticCustomError("gguf", "file not found: {path}", {"path": str(path)})
        return path.resolve()

    @model_validator(mode="after")
    def _one_backend(self) -> ModelConfig:
        if (self.api_url is None) == (self.gguf is None):
            raise _conflict("apiUrl", "exactly one of apiUrl or gguf is required")
        if self.llama_args is not None and self.gguf is None:
            raise _conflict("llamaArgs", "llamaArgs only applies to a gguf model")
        return self

    @property
    def embedded(self) -> bool:
        """True when the provider must launch the model server itself."""
        return self.gguf is not None


class ModelsConfig(BaseModel):
    """All served models, looked up by on-chain id (case-insensitive hex)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[ModelConfig]

    @model_validator(mode="after")
    def _unique_ids(self) -> ModelsConfig:
        seen: set[str] = set()
        for i, m in enumerate(self.models):
            if m.model_id in seen:
                raise _conflict(f"models[{i}].modelId", f"duplicate modelId {m.model_id}")
            seen.add(m.model_id)
        return self

    def get(self, model_id: str) -> ModelConfig | None:
        """The entry for `model_id`, or None when this provider does not serve it."""
        wanted = normalize_model_id(model_id)
        for m in self.models:
            if m.model_id == wanted:
                return m
        return None

    def __contains__(self, model_id: object) -> bool:
        return isinstance(model_id, str) and self.get(model_id) is not None

    def slots_by_model(self) -> dict[str, int]:
        """`concurrentSlots` per model id, the input of CapacityManager."""
        return {m.model_id: m.concurrent_slots for m in self.models}


def _format_loc(loc: tuple[int | str, ...], ctx: Mapping[str, Any] | None) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    if ctx and isinstance(ctx.get("field"), str):
        out = f"{out}.{ctx['field']}" if out else ctx["field"]
    return out


def parse_models_config(
    data: str | bytes | Mapping[str, Any],
    *,
    source: str = "<models-config>",
    base_dir: Path | None = None,
) -> ModelsConfig:
    """Validate config content (e.g. from MODELS_CONFIG_CONTENT); errors name `source`."""
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ModelsConfigError(
                source, [("", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")]
            ) from None
    if not isinstance(data, Mapping):
        raise ModelsConfigError(source, [("", 'expected an object like {"models": [...]}')])
    try:
        return ModelsConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        issues = [(_format_loc(err["loc"], err.get("ctx")), err["msg"]) for err in exc.errors()]
        raise ModelsConfigError(source, issues) from None


def load_models_config(path: str | Path) -> ModelsConfig:
    """Read and validate `models-config.json`; relative gguf paths resolve next to it."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ModelsConfigError(str(path), [("", f"cannot read file: {exc.strerror}")]) from None
    return parse_models_config(text, source=str(path), base_dir=path.parent)
