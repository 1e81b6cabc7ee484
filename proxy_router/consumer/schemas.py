"""Request and response bodies of the consumer API, as pydantic models.

Handlers validate requests with these models and build every JSON response
through them (``model_dump``), and ``/openapi.json`` is generated from the same
models, so the document cannot drift from the code. A chat request is held to
OpenAI's contract (``ChatRequest``: strict types, OpenAI's bounds); keys OpenAI does
not document are kept and forwarded, for the provider, which knows its model server,
to map or refuse (``provider/normalize.py``). Amounts are MOR (or ETH) wei as decimal strings, so
JavaScript clients do not lose precision. The error shape is ``ErrorResponse``
in ``errors.py``; ``/healthcheck``'s is ``Health`` in ``proxy_router.health``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from proxy_router import bounded_json
from proxy_router.consumer.errors import ApiError, bad_request
from proxy_router.morrpc.protocol import PromptApi


def _decimal(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Wei = Annotated[str, BeforeValidator(_decimal), Field(
    pattern=r"^[0-9]+$", description="an amount in wei (10^-18 MOR or ETH), decimal string")]
Address = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$",
                               description="an EIP-55 checksummed address")]
Id32 = Annotated[str, Field(pattern=r"^0x[0-9a-f]{64}$",
                            description="a 32-byte id, 0x + 64 lowercase hex digits")]
Timestamp = Annotated[int, Field(ge=0, description="unix seconds (0 = not set)")]


class _Strict(BaseModel):
    """OpenAI's types, strictly: ``"stream": "yes"`` or ``"n": "2"`` is a 400, as there,
    never coerced (a client that sends them has a bug it should learn of)."""

    model_config = ConfigDict(strict=True, extra="forbid")


class _Open(_Strict):
    """Strict fields, unknown keys kept: the parts of a message (a chat template may read
    them, and clients echo back what they received, ``index`` and all)."""

    model_config = ConfigDict(strict=True, extra="allow")


def _whole(value: Any) -> Any:
    """``5.0`` is an integer to JSON Schema (and so to the OpenAPI document): taken as 5.
    ``5.5`` and ``"5"`` stay errors."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Int = Annotated[int, BeforeValidator(_whole)]
# Bounds before the validator, so that the document shows them as minimum and maximum.
Limit = Annotated[int, Field(ge=1), BeforeValidator(_whole)]
Choices = Annotated[int, Field(ge=1, le=128), BeforeValidator(_whole)]
TopLogprobs = Annotated[int, Field(ge=0, le=20), BeforeValidator(_whole)]
ToolName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageUrl(_Open):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageUrl


class InputAudio(_Open):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(_Open):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(_Open):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(_Open):
    type: Literal["file"]
    file: FileRef


class RefusalPart(_Open):
    type: Literal["refusal"]
    refusal: str


TextContent = str | list[TextPart]
UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


class FunctionCall(_Open):
    name: str
    arguments: str = Field(description="the arguments as a JSON text")


class ToolCall(_Open):
    id: str
    type: Literal["function"]
    function: FunctionCall


class SystemMessage(_Open):
    role: Literal["system"]
    content: TextContent
    name: str | None = None


class DeveloperMessage(_Open):
    role: Literal["developer"]
    content: TextContent
    name: str | None = None


class UserMessage(_Open):
    role: Literal["user"]
    content: str | list[UserPart]
    name: str | None = None


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls and self.function_call is None:
            raise _field_error("content", "required unless tool_calls or function_call is given")
        return self


class ToolMessage(_Open):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: str


class FunctionMessage(_Open):
    role: Literal["function"]
    content: str | None
    name: str


ChatMessage = Annotated[SystemMessage | DeveloperMessage | UserMessage | AssistantMessage
                        | ToolMessage | FunctionMessage, Field(discriminator="role")]


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class FunctionDefinition(_Strict):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON schema object")
    strict: bool | None = None


class FunctionTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(_Strict):
    name: ToolName


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: ToolChoiceFunction


class FunctionCallChoice(_Strict):
    name: ToolName


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchemaSpec(_Strict):
    name: ToolName
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema",
                                           description="a JSON schema object")
    strict: bool | None = None


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat,
                           Field(discriminator="type")]


class AudioOutput(_Strict):
    voice: str
    format: Literal["wav", "aac", "mp3", "flac", "opus", "pcm16"]


class Prediction(_Strict):
    type: Literal["content"]
    content: TextContent


Penalty = Annotated[float, Field(ge=-2, le=2)]
Bias = Annotated[float, Field(ge=-100, le=100)]
TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]
LogitBias = Annotated[dict[TokenId, Bias], WithJsonSchema({
    "type": "object", "additionalProperties": False, "description": "token id → bias",
    "patternProperties": {r"^[0-9]{1,10}$": {"type": "number", "minimum": -100,
                                             "maximum": 100}}})]


class ChatRequest(_Open):
    """OpenAI's chat request, every documented field with OpenAI's types and bounds.

    Keys OpenAI does not document (llama.cpp's ``top_k``, ``min_p``...) are kept and
    forwarded: the provider knows its model server, and refuses (400) what it would
    ignore (``provider/normalize.py``), as it maps ``max_completion_tokens``, the
    ``developer`` role and ``json_schema`` for it. ``n`` (several choices, each a whole
    generation on a slot of the provider) is capped at ``MAX_CHOICES``, below OpenAI's
    128: a 400 ``unsupported_value`` above it.
    """

    api: ClassVar[PromptApi] = "chat"
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Limit | None = None
    max_completion_tokens: Limit | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: Int | None = None
    logit_bias: LogitBias | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    n: Choices | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: Annotated[list[FunctionDefinition], Field(max_length=128)] | None = None
    function_call: Literal["none", "auto"] | FunctionCallChoice | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    store: bool | None = None
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)],
                             Annotated[str, Field(max_length=512)]],
                        Field(max_length=16)] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    audio: AudioOutput | None = None
    prediction: Prediction | None = None
    web_search_options: dict[str, Any] | None = None

    @field_validator("n")
    @classmethod
    def _few_choices(cls, n: int | None) -> int | None:
        if n is not None and n > MAX_CHOICES:
            raise PydanticCustomError(
                UNSUPPORTED, "at most {limit} choices per request are served here",
                {"limit": MAX_CHOICES})
        return n

    @model_validator(mode="after")
    def _consistent(self) -> ChatRequest:
        """What OpenAI refuses across fields."""
        if self.top_logprobs is not None and not self.logprobs:
            raise _field_error("top_logprobs", "requires logprobs to be true")
        names = {tool.function.name for tool in self.tools or ()}
        choice = self.tool_choice
        if choice == "required" and not names:
            raise _field_error("tool_choice", '"required" needs tools')
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise _field_error("tool_choice", f"no tool named {choice.function.name!r}")
        call = self.function_call
        if isinstance(call, FunctionCallChoice) and call.name not in {
                f.name for f in self.functions or ()}:
            raise _field_error("function_call", f"no function named {call.name!r}")
        return self

    def upstream_body(self) -> dict[str, Any]:
        """What the provider receives: the client's body minus routing-only fields
        (``model`` is the session's, ``stream_options`` the consumer's to serve)."""
        return self.model_dump(exclude_none=True, by_alias=True,
                               exclude={"stream_options", "model"})


MAX_CHOICES = 16
"""Most choices (``n``) one chat request may ask for; the provider caps it alike."""
UNSUPPORTED = "unsupported_value"
"""The code of a valid OpenAI request this marketplace cannot serve (yet)."""
INCONSISTENT = "invalid_value"
"""The code of a field that disagrees with another (a tool choice naming no tool): its
own type and bounds, which the OpenAPI document states, are fine."""


def _field_error(param: str, message: str) -> PydanticCustomError:
    """A model-level check's error, naming its field (``parse_body`` reads it)."""
    return PydanticCustomError("cross_field", "{param}: {message}",
                               {"param": param, "message": message})


class OpenSessionRequest(BaseModel):
    """Optional body of the session-opening routes (an empty body means the default)."""

    model_config = ConfigDict(extra="forbid")
    sessionDuration: int = Field(600, ge=300, le=7 * 24 * 3600,
                                 description="seconds; the stake is duration × price")


# -- OpenAI responses ----------------------------------------------------------------------


class OpenAIModel(BaseModel):
    id: str = Field(description="the on-chain model name, usable as `model`")
    object: Literal["model"] = "model"
    created: Timestamp
    owned_by: str
    modelId: Id32
    tags: list[str]
    activeBids: int = Field(ge=0)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class CompletionMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | None = None


class CompletionChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    message: CompletionMessage
    finish_reason: str | None = None


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class ChatCompletion(BaseModel):
    """A non-streamed answer as the provider's OpenAI-compatible server produced it."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChunkChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    delta: dict[str, Any] = Field(description="role, content, tool_calls... as they arrive")
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    """One ``data:`` frame of a streamed answer (passed through from the provider; the
    final usage-only chunk is ours when ``stream_options.include_usage`` asks for it)."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# -- marketplace responses ----------------------------------------------------------------


class Balance(BaseModel):
    address: Address
    eth: Wei
    mor: Wei
    flavor: Literal["native", "morpheus"] = Field(
        "native", description="the marketplace traded on: ours, or a Morpheus-Lumerin diamond")
    morHeld: Wei = Field("0", description="Morpheus: stake held until the next UTC midnight "
                         "after an early close")
    morWithdrawable: Wei = Field("0", description="Morpheus: held stake released now "
                                 "(POST /blockchain/stakes/withdraw)")


class Withdrawal(BaseModel):
    """Held stakes taken back (Morpheus ``withdrawUserStakes``)."""

    tx: str
    amount: Wei
    stillHeld: Wei


class Provider(BaseModel):
    id: Address
    endpoint: str = Field(description="host:port of the provider's MOR-RPC listener")
    stake: Wei
    createdAt: Timestamp
    activeBids: int = Field(ge=0)
    sessionCount: int = Field(ge=0)
    isDeleted: bool


class MarketModel(BaseModel):
    id: Id32
    owner: Address
    baseModelId: Id32
    ipfsCID: Id32
    stake: Wei
    name: str
    tags: list[str]
    createdAt: Timestamp
    activeBids: int = Field(ge=0)
    isDeleted: bool


class Bid(BaseModel):
    id: Id32
    provider: Address
    modelId: Id32
    pricePerSecond: Wei
    nonce: int = Field(ge=0)
    createdAt: Timestamp
    deletedAt: Timestamp


class RatedBid(Bid):
    score: float = Field(ge=0, description="higher is better: price first, then statistics")
    successRate: float = Field(ge=0, le=1)
    meanTps: float = Field(ge=0, description="mean tokens per second from on-chain receipts")
    meanTtftMs: float = Field(ge=0, description="mean time to first token (ms), same source")


class LocalSession(BaseModel):
    """A session this consumer opened, as it keeps it (the session key stays private)."""

    sessionId: Id32
    modelId: Id32
    bidId: Id32
    provider: Address
    endpoint: str
    stake: Wei
    openedAt: Timestamp
    endsAt: Timestamp
    status: Literal["open", "closing", "closed"]
    closeTx: str | None = Field(None, description="the closeSession transaction, once sent")


class OnChainSession(BaseModel):
    """The contract's view of a session, plus the time left and the cost so far."""

    id: Id32
    user: Address
    provider: Address
    bidId: Id32
    modelId: Id32
    stake: Wei
    pricePerSecond: Wei
    openedAt: Timestamp
    endsAt: Timestamp
    closedAt: Timestamp
    providerEarned: Wei
    userRefund: Wei
    held: Wei
    releaseAt: Timestamp
    disputed: bool
    closed: bool
    claimed: bool
    secondsLeft: int = Field(ge=0)
    costSoFar: Wei


class Settlement(BaseModel):
    """A session closed on chain: stake == providerEarned + userRefund (+ held). ``held``
    is what neither side received yet: on our marketplace the disputed part of
    providerEarned, on a Morpheus diamond the user's stake held until the next UTC
    midnight (userRefund is then what came back at once)."""

    sessionId: Id32
    tx: str = Field(description="closeSession transaction hash")
    gasUsed: int = Field(ge=0)
    gasCostWei: Wei
    stake: Wei
    providerEarned: Wei
    userRefund: Wei
    held: Wei
    disputed: bool


T = TypeVar("T", bound=BaseModel)


def parse_body(model: type[T], raw: bytes) -> T:
    """Validate a JSON body; every failure is a 400 naming the field."""
    if not raw.strip():
        if model is OpenSessionRequest:
            return model()
        raise bad_request("request body is empty; expected a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors()
        if errors[0]["type"] == "json_invalid":
            raise bad_request(f"malformed JSON: {errors[0]['msg']}",
                              code="invalid_json") from None
        raise _api_error(errors, raw) from None


def _api_error(errors: list[ErrorDetails], raw: bytes) -> ApiError:
    """The 400 of the most specific error: where a union's branches all failed, the
    branch that got furthest into the input says what is wrong."""
    try:
        doc: Any = bounded_json.loads(raw, max_bytes=len(raw))
    except ValueError:
        doc = None
    params = [_param(err, doc) for err in errors]
    best = max(range(len(errors)), key=lambda i: (params[i].count(".") + 1 if params[i]
                                                  else 0, -i))
    err, param = errors[best], params[best] or None
    ctx = err.get("ctx") or {}
    if err["type"] == "cross_field":
        message = str(ctx.get("message", err["msg"]))
    else:
        message = err["msg"]
    code = {UNSUPPORTED: UNSUPPORTED, "cross_field": INCONSISTENT}.get(err["type"],
                                                                    "invalid_parameter")
    text = f"{param}: {message}" if param else f"request body: {message}"
    return ApiError(400, code, text, param=param)


def _param(err: ErrorDetails, doc: Any) -> str:
    """The field an error is about, as a dotted path through the client's JSON
    (``messages.0.content``): pydantic's own path also names union branches and tags
    (``messages.0.user.content.str``), which the input does not have."""
    loc = err["loc"]
    if doc is None:  # pydantic read what our parser did not: its path as it is
        return ".".join(str(key) for key in loc)
    path: list[str] = []
    node = doc
    for i, key in enumerate(loc):
        if isinstance(key, int) and isinstance(node, list) and 0 <= key < len(node):
            node = node[key]
        elif isinstance(key, str) and isinstance(node, dict) and key in node:
            node = node[key]
        elif not (i == len(loc) - 1 and err["type"] == "missing"):
            continue  # a branch or tag name, not in the input
        path.append(str(key))
    ctx = err.get("ctx") or {}
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        path.append(str(ctx.get("discriminator", "")).strip("'"))
    elif err["type"] == "cross_field":
        path.append(str(ctx.get("param", "")))
    return ".".join(p for p in path if p)
