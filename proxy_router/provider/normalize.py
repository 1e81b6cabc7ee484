"""A chat request mapped to what our model server honours (llama-cpp-python's server).

The consumer validates OpenAI's contract; this module knows the backend the provider
runs (the embedded ``gguf`` server, the devnet's), whose request model differs from
OpenAI's in ways that cost users money or break popular clients:

- it ignores keys it does not know, so an unmapped ``max_completion_tokens`` ran
  unbounded, and a field such as ``reasoning_effort`` would be dropped without a word;
- its message types refuse the ``developer`` role, content parts outside user turns
  and an assistant ``content: null``, and chat templates concatenate ``content`` as a
  string (a list of parts or ``None`` breaks them);
- it knows ``response_format`` as ``json_object`` (+ ``schema``), not ``json_schema``,
  and falls back to "any JSON" when a schema does not convert to a grammar.

So every prompt passes through ``normalize_chat`` once, before the backend sees it:
what has a faithful equivalent is mapped, what never changes the answer (``user``,
``metadata``...) is dropped, and anything else is ``BAD_REQUEST`` naming the field
(the consumer answers it as a 400), never a backend error quoting its internals.
Schemas (``response_format``, a forced tool's parameters) are converted with
llama-cpp-python's own converter before they are sent, within a size budget: a
``maxLength`` of 10^8 would otherwise build a grammar of gigabytes, here and again in
the backend.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from proxy_router.morrpc import ErrorCode, RpcError
from proxy_router.provider.choices import MAX_CHOICES

log = structlog.get_logger(__name__)

# Keys the backend reads as OpenAI means them, forwarded as they are (llama.cpp's own
# sampling extensions included: a client that names them asked for llama.cpp).
_PASSED = frozenset({
    "model", "stream", "stream_options", "temperature", "top_p", "stop", "seed",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "min_tokens", "min_p", "top_k", "repeat_penalty", "logit_bias_type", "mirostat_mode",
    "mirostat_tau", "mirostat_eta", "grammar",
})
# Keys that never change the answer: bookkeeping at OpenAI, nothing to a model server.
# (``parallel_tool_calls``: this server makes at most one call per answer anyway;
# ``prediction`` only speeds an answer up.)
_DROPPED = frozenset({
    "user", "store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier",
    "parallel_tool_calls", "prediction",
})
_ROLES = frozenset({"system", "user", "assistant", "tool", "function"})
_TEXT_PARTS = {"text": "text", "refusal": "refusal"}  # part type → its text's key
_NEEDED = {"tool": "tool_call_id", "function": "name"}  # the server's message types require

SCHEMA_BUDGET = 20_000
"""Most repetitions (``maxLength``, ``minItems``..., regex quantifiers) one schema may
ask for: each expands the grammar by about its count in rules."""
MAX_GRAMMAR_CHARS = 256 * 1024
"""Largest grammar a schema may convert to."""
_REPETITION_KEYS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties",
                    "maxProperties", "minContains", "maxContains")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


class _Refused(Exception):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def normalize_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` (an OpenAI chat request) as the backend must receive it; ``BAD_REQUEST``
    naming the field for what it cannot honour. A ``null`` field means its default."""
    try:
        return _normalize({k: v for k, v in body.items() if v is not None})
    except _Refused as exc:
        raise RpcError(ErrorCode.BAD_REQUEST, str(exc), {"param": exc.param}) from None


def _normalize(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(k for k in fields if k not in _PASSED and k not in _DROPPED
                     and k not in _MAPPED)
    if unknown:
        several = len(unknown) > 1
        raise _Refused(unknown[0], f"unsupported parameter{'s' if several else ''} "
                       f"{', '.join(unknown)}: this provider's model server does not "
                       f"honour {'them' if several else 'it'}, and an answer without "
                       f"{'them' if several else 'it'} would not be the one asked for")
    out = {k: v for k, v in fields.items() if k in _PASSED}
    if out.get("logprobs") is True and "top_logprobs" not in out:
        # OpenAI answers each token's logprob without top_logprobs; the server, only
        # with a count (null otherwise, without a word): 0 asks for the token's own.
        out["top_logprobs"] = 0
    for mapper in dict.fromkeys(_MAPPED[k] for k in fields if k in _MAPPED):
        mapper(fields, out)
    return out


# -- messages ----------------------------------------------------------------------------


def _messages(fields: dict[str, Any], out: dict[str, Any]) -> None:
    messages = fields["messages"]
    if not isinstance(messages, list):
        raise _Refused("messages", "must be an array of messages")
    out["messages"] = [_message(f"messages.{i}", m) for i, m in enumerate(messages)]


def _message(where: str, message: Any) -> dict[str, Any]:
    """One turn in the shape the server's message types and chat templates accept:
    ``developer`` is ``system`` (same intent, older name), content is a string."""
    if not isinstance(message, dict):
        raise _Refused(where, "must be an object")
    out = dict(message)
    role = message.get("role")
    if role == "developer":
        out["role"] = "system"
    elif not isinstance(role, str) or role not in _ROLES:
        raise _Refused(f"{where}.role", f"role {_shown(role)} is not supported")
    out["content"] = _content(f"{where}.content", message.get("content"))
    needed = _NEEDED.get(role)
    if needed is not None and not isinstance(message.get(needed), str):
        raise _Refused(f"{where}.{needed}", f"a {role} message needs a string {needed}")
    return out


def _content(where: str, content: Any) -> str:
    """A turn's text: ``null`` (an assistant turn that only calls tools) is empty, and
    text parts are joined by newlines (as vLLM joins them)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _Refused(where, "must be a string or an array of content parts")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        key = _TEXT_PARTS.get(kind) if isinstance(kind, str) else None
        if key is None:
            raise _Refused(f"{where}.{j}", f"{_shown(kind)} content is not supported: this "
                           "provider's model reads text only")
        text = part.get(key)
        if not isinstance(text, str):
            raise _Refused(f"{where}.{j}.{key}", "must be a string")
        texts.append(text)
    return "\n".join(texts)


# -- limits and choices ------------------------------------------------------------------


def _max_tokens(fields: dict[str, Any], out: dict[str, Any]) -> None:
    """``max_completion_tokens`` is OpenAI's newer name of ``max_tokens``, the only one
    the server reads; given both, the smaller limit holds."""
    limits = []
    for key in ("max_tokens", "max_completion_tokens"):
        value = fields.get(key)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise _Refused(key, "must be an integer of at least 1")
        limits.append(value)
    out["max_tokens"] = min(limits)


def _n(fields: dict[str, Any], out: dict[str, Any]) -> None:
    """Several choices are ours to serve (``provider/choices.py``: the server answers
    one), so ``n`` stays in the body only above 1, where it asks for that."""
    n = fields["n"]
    if not _is_int(n) or n < 1:
        raise _Refused("n", "must be an integer of at least 1")
    if n > MAX_CHOICES:
        raise _Refused("n", f"at most {MAX_CHOICES} choices per request")
    if n > 1:
        out["n"] = n


def _modalities(fields: dict[str, Any], out: dict[str, Any]) -> None:
    if fields["modalities"] != ["text"]:
        raise _Refused("modalities", 'only ["text"] is supported: this provider\'s model '
                       "answers in text")


# -- structured output -------------------------------------------------------------------


def _response_format(fields: dict[str, Any], out: dict[str, Any]) -> None:
    """``json_schema`` is the server's ``json_object`` with a ``schema`` (a grammar built
    from it constrains the answer); ``strict`` is what a grammar does anyway."""
    value = fields["response_format"]
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        out["response_format"] = {"type": "text"}
        return
    if kind == "json_object":
        schema, where = value.get("schema"), "response_format.schema"
    elif kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise _Refused("response_format.json_schema", "must be an object")
        schema, where = spec.get("schema"), "response_format.json_schema.schema"
    else:
        raise _Refused("response_format.type", f"{_shown(kind)} is not supported "
                       '(use "text", "json_object" or "json_schema")')
    rewritten: dict[str, Any] = {"type": "json_object"}
    if schema is not None:
        rewritten["schema"] = _checked_schema(where, schema)
    out["response_format"] = rewritten


def _tools(fields: dict[str, Any], out: dict[str, Any]) -> None:
    """Function tools, each with ``parameters`` (OpenAI lets a function omit them: no
    arguments; the server reads them to force a call)."""
    _tool_names(fields["tools"])
    out["tools"] = [{**tool, "function": _with_parameters(tool["function"])}
                    for tool in fields["tools"]]


def _functions(fields: dict[str, Any], out: dict[str, Any]) -> None:
    functions = fields["functions"]
    if not isinstance(functions, list) or not all(
            isinstance(f, dict) and isinstance(f.get("name"), str) for f in functions):
        raise _Refused("functions", "must be an array of functions with a name")
    out["functions"] = [_with_parameters(f) for f in functions]


def _with_parameters(function: dict[str, Any]) -> dict[str, Any]:
    if function.get("parameters") is not None:
        return function
    return {**function, "parameters": {"type": "object", "properties": {}}}


def _tool_choice(fields: dict[str, Any], out: dict[str, Any]) -> None:
    """The server forces a call only for a named tool (a grammar of its parameters);
    ``required`` with one tool is that tool named."""
    choice = fields["tool_choice"]
    tools = fields.get("tools")
    if choice in ("none", "auto"):
        out["tool_choice"] = choice
        return
    names = _tool_names(tools)
    if choice == "required":
        if len(names) != 1:
            raise _Refused("tool_choice", '"required" needs exactly one tool here (this '
                           "provider's model server cannot choose among several); name "
                           "the tool to call")
        choice = {"type": "function", "function": {"name": next(iter(names))}}
    name = _named(choice)
    if name is None:
        raise _Refused("tool_choice", 'must be "none", "auto", "required" or '
                       '{"type": "function", "function": {"name": ...}}')
    if name not in names:
        raise _Refused("tool_choice.function.name", f"no tool named {_shown(name)}")
    index, function = names[name]
    parameters = function.get("parameters")
    if parameters is not None:
        _checked_schema(f"tools.{index}.function.parameters", parameters)
    out["tool_choice"] = choice


def _function_call(fields: dict[str, Any], out: dict[str, Any]) -> None:
    """The deprecated ``function_call``, checked as ``tool_choice`` is (the server turns
    it into one)."""
    call = fields["function_call"]
    if call not in ("none", "auto"):
        name = call.get("name") if isinstance(call, dict) else None
        functions = fields.get("functions")
        known = {f["name"]: (i, f) for i, f in enumerate(functions)
                 if isinstance(f, dict) and isinstance(f.get("name"), str)} \
            if isinstance(functions, list) else {}
        if not isinstance(name, str) or name not in known:
            raise _Refused("function_call", 'must be "none", "auto" or {"name": ...} '
                           "naming one of functions")
        index, function = known[name]
        parameters = function.get("parameters")
        if parameters is not None:
            _checked_schema(f"functions.{index}.parameters", parameters)
    out["function_call"] = call


def _tool_names(tools: Any) -> dict[str, tuple[int, dict[str, Any]]]:
    """Each function tool's index and function by name; another kind is refused."""
    if tools is None:
        return {}
    if not isinstance(tools, list):
        raise _Refused("tools", "must be an array")
    names = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or \
                not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _Refused(f"tools.{i}", "only function tools with a name are supported")
        names[function["name"]] = (i, function)
    return names


def _named(choice: Any) -> str | None:
    if not isinstance(choice, dict) or choice.get("type") != "function":
        return None
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def _checked_schema(where: str, schema: Any) -> Any:
    """``schema`` if it converts to a grammar of bounded size; else ``BAD_REQUEST``
    (the server would silently fall back to any JSON, or build a huge grammar)."""
    if not isinstance(schema, dict):
        raise _Refused(where, "must be a JSON schema object")
    spent = sum(_repetitions(schema))
    if spent > SCHEMA_BUDGET:
        raise _Refused(where, f"asks for {spent} repetitions (maxLength, maxItems, regex "
                       f"counts...); at most {SCHEMA_BUDGET} fit a grammar")
    converter = _grammar_converter()
    if converter is None:  # no llama-cpp-python here: the backend converts it alone
        return schema
    try:
        grammar = converter(json.dumps(schema))
    except RecursionError:
        raise _Refused(where, "is nested too deeply") from None
    except Exception as exc:  # the converter raises AssertionError, ValueError, KeyError...
        raise _Refused(where, f"cannot be turned into a grammar: {_reason(exc)}") from None
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise _Refused(where, "makes a grammar too large for this provider's model server")
    return schema


def _repetitions(node: Any) -> Iterator[int]:
    """The repetition counts a schema asks for, each a grammar expanded that many
    times (iterative: the depth is the JSON's, up to 1024)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                if key in _REPETITION_KEYS and _is_int(value):
                    yield max(value, 0)
                elif key == "pattern" and isinstance(value, str):
                    yield _pattern_cost(value)
                elif isinstance(value, dict | list):
                    stack.append(value)


def _pattern_cost(pattern: str) -> int:
    """An upper bound of a regex's expansion: its ``{n,m}`` counts multiplied (nested
    groups multiply; an open ``{n,}`` costs its ``n``)."""
    cost = 1
    for low, high in _QUANTIFIER.findall(pattern):
        cost *= max(int(high) if high else int(low), 1)
        if cost > SCHEMA_BUDGET:
            return cost
    return cost if cost > 1 else 0


@cache
def _grammar_converter() -> Callable[[str], str] | None:
    """llama-cpp-python's JSON schema → GBNF converter, the one its server applies.

    Loaded from its file: the package's ``__init__`` loads the native llama library,
    which this process never needs. ``None`` where llama-cpp-python is not installed
    (a provider with only ``apiUrl`` backends).
    """
    try:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / "llama_grammar.py"
        loader_spec = importlib.util.spec_from_file_location("_llama_cpp_grammar", path)
        if loader_spec is None or loader_spec.loader is None or not path.is_file():
            return None
        module: ModuleType = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
        convert: Callable[[str], str] = module.json_schema_to_gbnf
    except Exception as exc:  # another version's layout: the backend still converts
        log.warning("grammar_converter_unavailable", error=str(exc))
        return None
    return convert


# -- helpers -----------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """A client's value in an error message, quoted and cut short."""
    text = json.dumps(value) if isinstance(value, str | int | float | bool) else \
        type(value).__name__ if value is not None else "null"
    return text if len(text) <= 40 else text[:37] + "..."


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


_MAPPED: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "messages": _messages,
    "max_tokens": _max_tokens,
    "max_completion_tokens": _max_tokens,
    "n": _n,
    "tools": _tools,
    "functions": _functions,
    "modalities": _modalities,
    "response_format": _response_format,
    "tool_choice": _tool_choice,
    "function_call": _function_call,
}
"""Keys mapped (or checked) for the backend; each mapper writes its part of the body."""


# -- legacy completions and embeddings ---------------------------------------------------

_COMPLETION_PASSED = frozenset({
    "model", "stream", "stream_options", "prompt", "suffix", "max_tokens", "temperature",
    "top_p", "echo", "stop", "logprobs", "presence_penalty", "frequency_penalty",
    "logit_bias", "seed", "min_tokens", "min_p", "top_k", "repeat_penalty",
    "logit_bias_type", "mirostat_mode", "mirostat_tau", "mirostat_eta", "grammar",
})
_EMBEDDING_PASSED = frozenset({"model", "input", "encoding_format", "dimensions"})


def normalize_completion(body: Mapping[str, Any]) -> dict[str, Any]:
    """A legacy ``/v1/completions`` request as the backend must receive it: one prompt
    (a string or one token array; the server answers one), ``best_of`` of 1; ``n``
    as for chat (several choices are served by ``provider/choices.py``)."""
    try:
        fields = {k: v for k, v in body.items() if v is not None}
        out = _known(fields, _COMPLETION_PASSED, {"n", "best_of"})
        prompt = fields.get("prompt")
        if isinstance(prompt, list) and not all(isinstance(t, int) for t in prompt):
            # several prompts (strings or token arrays), not one token array
            if len(prompt) != 1:
                raise _Refused("prompt", "one prompt per request: this provider's model "
                               "server answers a single prompt")
            out["prompt"] = prompt[0]
        if "best_of" in fields and fields["best_of"] != 1:
            raise _Refused("best_of", "best_of > 1 is not supported for legacy completions")
        if "n" in fields:
            _n(fields, out)
        return out
    except _Refused as exc:
        raise RpcError(ErrorCode.BAD_REQUEST, str(exc), {"param": exc.param}) from None


def normalize_embedding(body: Mapping[str, Any]) -> dict[str, Any]:
    """An ``/v1/embeddings`` request with only what changes the vectors."""
    try:
        return _known({k: v for k, v in body.items() if v is not None}, _EMBEDDING_PASSED,
                      set())
    except _Refused as exc:
        raise RpcError(ErrorCode.BAD_REQUEST, str(exc), {"param": exc.param}) from None


def _known(fields: dict[str, Any], passed: frozenset[str], mapped: set[str]
           ) -> dict[str, Any]:
    """The passed keys of ``fields``; a key neither passed, mapped nor ``_DROPPED`` is
    refused, naming it (the backend would ignore it)."""
    unknown = sorted(k for k in fields if k not in passed and k not in mapped
                     and k not in _DROPPED)
    if unknown:
        raise _Refused(unknown[0], f"unsupported parameter {', '.join(unknown)}: this "
                       "provider's model server does not honour it")
    return {k: v for k, v in fields.items() if k in passed}
