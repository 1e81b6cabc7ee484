"""`models-config.json`: which on-chain models this provider serves, and how.

Each entry maps an on-chain `modelId` to OpenAI-compatible backends: either the
`apiUrl` of a server that already runs (or a list of them: several servers behind one
model, each with the model's `concurrentSlots`), or a `gguf` file the provider launches
itself with llama-cpp-python.

Two formats load, told apart by the document itself:

- **Ours** (anything not below) is strict: unknown keys are rejected so that a typo in,
  say, `concurrentSlots` cannot silently fall back to the default capacity, and an
  `apiType` other than `openai` is an error.
- **The reference's** (the Morpheus-Lumerin Go proxy-router's, so that its file loads
  as it is): a document with a top-level `"$schema"`, or whose entries use a key only
  the reference has (`capacityPolicy`, `parameters`), or its older form, an object
  keyed by modelId. It is read as leniently as the reference reads it: an entry this
  router cannot serve (an `apiType` other than `openai`, such as `claudeai`,
  `prodia-v2` or `hyperbolic-sd`, or an `openai` URL that is neither a chat nor an
  embeddings endpoint: audio, images) is skipped with a warning instead of refusing the file;
  unknown keys, `parameters` and `capacityPolicy: idle_timeout` (we count a session's
  slot until its end, the reference's `simple`) are warned about and ignored. An entry
  that is malformed (a bad modelId or URL, no modelName) still fails the file.

`modelId` may come with or without `0x` in both. Warnings name the model, never its
`apiKey` or `apiUrl` (either may carry a credential).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from proxy_router.morrpc.protocol import PromptApi

DEFAULT_CONCURRENT_SLOTS = 8
_MODEL_ID_RE = re.compile(r"(0x)?[0-9a-f]{64}")
# What the reference's format has that ours does not, and the keys ours knows.
_REFERENCE_KEYS = frozenset({"capacityPolicy", "parameters"})
_OUR_KEYS = frozenset({"modelId", "modelName", "apiType", "apiUrl", "apiKey",
                       "concurrentSlots", "modelType", "gguf", "llamaArgs"})
_REFERENCE_API_TYPES = frozenset({"openai", "claudeai", "prodia-sd", "prodia-sdxl",
                                  "prodia-v2", "hyperbolic-sd"})
# OpenAI-compatible endpoints we do not serve (the reference routes by URL; an
# `/embeddings` URL is an embedding model of ours).
_EMBEDDINGS_SUFFIX = "/embeddings"
_NOT_CHAT = ("/audio/speech", "/audio/transcriptions", "/audio/translations",
             "/images/generations", "/completions")
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


def _base_url(value: object, where: str) -> str:
    """The base URL of one ``apiUrl``: a full ``.../chat/completions`` URL (reference style)
    is cut back."""
    url = value.strip().rstrip("/") if isinstance(value, str) else ""
    if url.endswith(_CHAT_SUFFIX):
        url = url[: -len(_CHAT_SUFFIX)]
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise PydanticCustomError(
            "api_url", "{where}must be an http(s) URL such as http://127.0.0.1:8080/v1",
            {"where": f"{where}: " if where else ""})
    return url


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
    """One served model. Exactly one of `apiUrl` (external servers) or `gguf` (embedded)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    model_id: str = Field(alias="modelId")
    model_name: str = Field(alias="modelName", min_length=1)
    api_type: Literal["openai"] = Field(default="openai", alias="apiType")
    api_urls: tuple[str, ...] = Field(default=(), alias="apiUrl")
    """Base URLs of the model's servers: ``apiUrl`` is one URL or a list of them (several
    GPUs or a cluster behind one model); the provider balances prompts between them."""
    api_key: str | None = Field(default=None, alias="apiKey", repr=False)
    concurrent_slots: int = Field(default=DEFAULT_CONCURRENT_SLOTS, alias="concurrentSlots", ge=1)
    """Slots of EACH backend: the model serves ``concurrent_slots × len(api_urls)`` prompts
    at once (``total_slots``)."""
    model_type: Literal["llm", "embedding"] = Field(default="llm", alias="modelType")
    """``embedding``: the server answers ``/v1/embeddings`` only; ``llm``: chat and legacy
    completions (a server cannot do both well: llama.cpp's embedding mode skips logits)."""
    gguf: Path | None = None
    llama_args: LlamaArgs | None = Field(default=None, alias="llamaArgs")

    @field_validator("model_id", mode="before")
    @classmethod
    def _check_model_id(cls, value: object) -> str:
        if not isinstance(value, str) or not _MODEL_ID_RE.fullmatch(value.strip().lower()):
            raise PydanticCustomError(
                "model_id", "must be 64 hex digits, with or without 0x (the on-chain model id)"
            )
        return normalize_model_id(value)

    @field_validator("api_type", mode="before")
    @classmethod
    def _check_api_type(cls, value: object) -> object:
        if value != "openai":
            raise PydanticCustomError(
                "api_type", "must be 'openai' (OpenAI-compatible chat); a reference-format "
                'file (with "$schema") skips the entries of other apiTypes instead'
            )
        return value

    @field_validator("api_urls", mode="before")
    @classmethod
    def _normalize_api_urls(cls, value: object) -> tuple[str, ...]:
        """One URL or a non-empty list of distinct ones, each stored as its base URL."""
        if value is None:
            return ()
        many = isinstance(value, list | tuple)
        urls = list(value) if isinstance(value, list | tuple) else [value]
        if many and not urls:
            raise PydanticCustomError("api_url", "must list at least one URL")
        out = tuple(_base_url(url, f"[{i}]" if many else "") for i, url in enumerate(urls))
        if len(set(out)) != len(out):
            raise PydanticCustomError("api_url", "lists the same URL twice")
        return out

    @property
    def api_url(self) -> str | None:
        """The first backend's base URL (None for a gguf model)."""
        return self.api_urls[0] if self.api_urls else None

    @property
    def total_slots(self) -> int:
        """Prompts the model serves at once: slots per backend × backends (1 for gguf)."""
        return self.concurrent_slots * max(1, len(self.api_urls))

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
        if bool(self.api_urls) == (self.gguf is not None):
            raise _conflict("apiUrl", "exactly one of apiUrl or gguf is required")
        if self.llama_args is not None and self.gguf is None:
            raise _conflict("llamaArgs", "llamaArgs only applies to a gguf model")
        if self.model_type == "embedding" and self.llama_args and self.llama_args.model_extra:
            raise _conflict("llamaArgs", "an embedding model takes only n_ctx and n_threads")
        return self

    def serves(self, api: PromptApi) -> bool:
        """Whether this model answers prompts of ``api``."""
        return (api == "embeddings") == (self.model_type == "embedding")

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
        """Slots per model id (``concurrentSlots`` × backends), the input of CapacityManager."""
        return {m.model_id: m.total_slots for m in self.models}


def _format_loc(loc: tuple[int | str, ...], ctx: Mapping[str, Any] | None) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    if ctx and isinstance(ctx.get("field"), str):
        out = f"{out}.{ctx['field']}" if out else ctx["field"]
    return out


def _issues(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[tuple[str, str]]:
    return [(_format_loc(prefix + tuple(err["loc"]), err.get("ctx")), err["msg"])
            for err in exc.errors()]


def _log() -> Any:
    # Looked up per use, so that a logging set-up made after import (or a test's
    # capture) applies; these warnings are rare.
    return structlog.get_logger(__name__)


def _is_legacy_map(doc: Mapping[str, Any]) -> bool:
    """The reference's first format: ``{"0x<modelId>": {...}, ...}``, no ``models``."""
    return bool(doc) and "models" not in doc and all(
        isinstance(k, str) and _MODEL_ID_RE.fullmatch(k.strip().lower())
        and isinstance(v, Mapping) for k, v in doc.items())


def is_reference_format(doc: Mapping[str, Any]) -> bool:
    """True for the Go proxy-router's format (see the module docstring for the rule)."""
    if "$schema" in doc or _is_legacy_map(doc):
        return True
    models = doc.get("models")
    return isinstance(models, list) and any(
        isinstance(m, Mapping) and not _REFERENCE_KEYS.isdisjoint(m) for m in models)


def _skip_reason(entry: Mapping[str, Any]) -> str | None:
    """Why this router cannot serve a reference entry, or None when it can."""
    api_type = entry.get("apiType", "openai")
    if api_type != "openai":
        known = "" if api_type in _REFERENCE_API_TYPES else "unknown "
        return f"{known}apiType {api_type!r}: this router serves OpenAI-compatible chat only"
    for url in _urls_of(entry.get("apiUrl")):
        path = urlsplit(url.strip()).path.rstrip("/")
        if not path.endswith("/chat/completions") and path.endswith(_NOT_CHAT):
            return "apiUrl is not a chat or embeddings endpoint (audio, images...)"
    return None


def _urls_of(value: object) -> list[str]:
    """The string URLs of an ``apiUrl`` (one, or a list); the rest is for validation."""
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str)]


def _from_reference_entry(entry: Mapping[str, Any], label: str) -> dict[str, Any]:
    """Our form of one reference entry; what we ignore is warned about, by name only."""
    out = {k: v for k, v in entry.items() if k in _OUR_KEYS}
    given = out.get("apiUrl")
    urls = [u.strip().rstrip("/") for u in _urls_of(given)]
    if urls and len(urls) == len(given if isinstance(given, list) else [given]) \
            and all(u.endswith(_EMBEDDINGS_SUFFIX) for u in urls):
        cut = [u[: -len(_EMBEDDINGS_SUFFIX)] for u in urls]
        out["apiUrl"] = cut if isinstance(out["apiUrl"], list) else cut[0]
        out["modelType"] = "embedding"
    name = entry.get("modelName")
    ignored = sorted(k for k in entry if k not in _OUR_KEYS | _REFERENCE_KEYS)
    if entry.get("parameters"):
        ignored.append("parameters")
    policy = entry.get("capacityPolicy", "simple")
    if policy != "simple":
        _log().warning("models_config_capacity_policy", entry=label, model=name,
                       capacity_policy=str(policy), used="simple",
                       why="a session holds its slot until it ends or closes")
    if out.get("concurrentSlots") == 0:
        # The reference reads 0 as "no limit"; we always bound a backend.
        ignored.append("concurrentSlots")
        del out["concurrentSlots"]
    if ignored:
        _log().warning("models_config_keys_ignored", entry=label, model=name, keys=ignored)
    return out


def _parse_reference(doc: Mapping[str, Any], source: str,
                     base_dir: Path | None) -> ModelsConfig:
    if _is_legacy_map(doc):
        entries: list[tuple[str, tuple[int | str, ...], Any]] = [
            (key, (key,), dict(value, modelId=key)) for key, value in doc.items()]
    else:
        models = doc.get("models")
        if not isinstance(models, list):
            raise ModelsConfigError(source, [("models", "must be a list of models")])
        entries = [(f"models[{i}]", ("models", i), m) for i, m in enumerate(models)]
        unknown = sorted(k for k in doc if k not in ("$schema", "models"))
        if unknown:
            _log().warning("models_config_keys_ignored", entry="(top level)", keys=unknown)
    served: list[ModelConfig] = []
    issues: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for label, loc, entry in entries:
        if not isinstance(entry, Mapping):
            issues.append((label, "must be an object"))
            continue
        reason = _skip_reason(entry)
        if reason is not None:
            _log().warning("models_config_model_skipped", entry=label,
                           model=entry.get("modelName"), model_id=str(entry.get("modelId")),
                           api_type=str(entry.get("apiType", "openai")), why=reason)
            continue
        try:
            model = ModelConfig.model_validate(_from_reference_entry(entry, label),
                                               context={"base_dir": base_dir})
        except ValidationError as exc:
            issues.extend(_issues(exc, loc))
            continue
        if model.model_id in seen:
            issues.append((f"{label}.modelId", f"duplicate modelId {model.model_id} "
                                               f"(also {seen[model.model_id]})"))
            continue
        seen[model.model_id] = label
        served.append(model)
    if issues:
        raise ModelsConfigError(source, issues)
    if not served:
        _log().warning("models_config_nothing_served", source=source)
    return ModelsConfig(models=served)


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
    if is_reference_format(data):
        return _parse_reference(data, source, base_dir)
    try:
        return ModelsConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ModelsConfigError(source, _issues(exc)) from None


def load_models_config(path: str | Path) -> ModelsConfig:
    """Read and validate `models-config.json`; relative gguf paths resolve next to it."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ModelsConfigError(str(path), [("", f"cannot read file: {exc.strerror}")]) from None
    return parse_models_config(text, source=str(path), base_dir=path.parent)


def load_configured_models(path: Path | None, content: SecretStr | str | None) -> ModelsConfig:
    """The provider's models: MODELS_CONFIG_PATH's file if it exists, else
    MODELS_CONFIG_CONTENT (the file wins, as in the reference). Unlike the reference,
    the content is never written to the path: it is read at each start instead."""
    if content is not None and (path is None or not Path(path).is_file()):
        text = content.get_secret_value() if isinstance(content, SecretStr) else content
        return parse_models_config(text, source="MODELS_CONFIG_CONTENT")
    if path is None:
        raise ModelsConfigError("models config", [("", "set MODELS_CONFIG_PATH or "
                                                        "MODELS_CONFIG_CONTENT")])
    return load_models_config(path)
