"""The non-chat prompt routes' bodies: legacy ``/v1/completions`` and ``/v1/embeddings``.

Held to OpenAI's contract as ``ChatRequest`` is (strict types, OpenAI's bounds; keys
OpenAI does not document kept for the provider to map or refuse). Each request names
the ``api`` it is sent as in ``session.prompt`` and builds its ``upstream_body``.

Embeddings travel as base64 whatever the client asked: a float in JSON takes about 20
bytes, in base64 5.3, so 2,048 vectors of 576 dimensions fit one sealed frame (8 MiB)
only that way; the consumer gives the client floats again when it asked for them
(``client_embeddings``).
"""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from proxy_router.consumer.schemas import (
    Choices,
    Int,
    Limit,
    LogitBias,
    Penalty,
    StreamOptions,
    Usage,
    _Open,
    _whole,
)
from proxy_router.morrpc.protocol import PromptApi

MAX_EMBEDDING_INPUTS = 2048
"""OpenAI's own limit of inputs per embeddings request."""
DEFAULT_COMPLETION_TOKENS = 16
"""OpenAI's default ``max_tokens`` for a legacy completion, made explicit for backends
whose own default is "until the context is full" (paid by the second)."""

Token = Annotated[int, Field(ge=0), BeforeValidator(_whole)]
TokenArray = Annotated[list[Token], Field(min_length=1)]
NonEmpty = Annotated[str, Field(min_length=1)]


class CompletionRequest(_Open):
    """OpenAI's legacy completion request (``text_completion``)."""

    api: ClassVar[PromptApi] = "completions"
    model: str = Field(min_length=1)
    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenArray | Annotated[
        list[TokenArray], Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Limit | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: Int | None = None
    logit_bias: LogitBias | None = None
    logprobs: Annotated[int, Field(ge=0, le=5), BeforeValidator(_whole)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    n: Choices | None = None
    best_of: Annotated[int, Field(ge=0, le=20), BeforeValidator(_whole)] | None = None
    user: str | None = None

    def upstream_body(self) -> dict[str, Any]:
        body = self.model_dump(exclude_none=True, by_alias=True,
                               exclude={"stream_options", "model"})
        body.setdefault("max_tokens", DEFAULT_COMPLETION_TOKENS)
        return body


class EmbeddingRequest(_Open):
    """OpenAI's embeddings request."""

    api: ClassVar[PromptApi] = "embeddings"
    stream: ClassVar[bool] = False
    stream_options: ClassVar[None] = None
    model: str = Field(min_length=1)
    input: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1,
                                                      max_length=MAX_EMBEDDING_INPUTS)] \
        | TokenArray | Annotated[list[TokenArray], Field(min_length=1,
                                                          max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Limit | None = None
    user: str | None = None

    def upstream_body(self) -> dict[str, Any]:
        body = self.model_dump(exclude_none=True, by_alias=True, exclude={"model"})
        body["encoding_format"] = "base64"  # see the module's docstring
        return body


class TextChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: Any = None


class TextCompletion(BaseModel):
    """A legacy completion as the provider's server produced it."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class TextCompletionChunk(TextCompletion):
    """One ``data:`` frame of a streamed legacy completion."""


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int = Field(ge=0)
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian "
                                         "float32s (encoding_format)")


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def client_embeddings(answer: EmbeddingList, encoding_format: str) -> EmbeddingList:
    """The provider's answer (base64 on the wire) as the client asked for it."""
    if encoding_format == "base64":
        return answer
    data = []
    for item in answer.data:
        vector = item.embedding
        if isinstance(vector, str):
            raw = base64.b64decode(vector, validate=True)
            if len(raw) % 4:
                raise ValueError("an embedding's base64 is not float32s")
            vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        data.append(Embedding(index=item.index, embedding=vector))
    return answer.model_copy(update={"data": data})
