"""Request and response bodies of the consumer API, as pydantic models.

Handlers validate requests with these models and build every JSON response
through them (``model_dump``), and ``/openapi.json`` is generated from the same
models, so the document cannot drift from the code. Unknown OpenAI parameters
are kept and forwarded (``extra="allow"``): the provider's llama.cpp server
decides what it supports. Amounts are MOR (or ETH) wei as decimal strings, so
JavaScript clients do not lose precision. The error shape is ``ErrorResponse``
in ``errors.py``; ``/healthcheck``'s is ``Health`` in ``proxy_router.health``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from proxy_router.consumer.errors import ApiError, bad_request


def _decimal(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Wei = Annotated[str, BeforeValidator(_decimal), Field(
    pattern=r"^[0-9]+$", description="an amount in wei (10^-18 MOR or ETH), decimal string")]
Address = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$",
                               description="an EIP-55 checksummed address")]
Id32 = Annotated[str, Field(pattern=r"^0x[0-9a-f]{64}$",
                            description="a 32-byte id, 0x + 64 lowercase hex digits")]
Timestamp = Annotated[int, Field(ge=0, description="unix seconds (0 = not set)")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[Any] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)

    def upstream_body(self) -> dict[str, Any]:
        """What the provider receives: the client's body minus routing-only fields."""
        body = self.model_dump(exclude_none=True, exclude={"stream_options"})
        body.pop("model", None)
        return body


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
        err = exc.errors()[0]
        if err["type"] == "json_invalid":
            raise bad_request(f"malformed JSON: {err['msg']}", code="invalid_json") from None
        param = ".".join(str(p) for p in err["loc"]) or None
        message = f"{param}: {err['msg']}" if param else f"request body: {err['msg']}"
        raise ApiError(400, "invalid_parameter", message, param=param) from None
