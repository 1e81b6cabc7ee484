"""Request bodies of the consumer API, validated with pydantic.

Unknown OpenAI parameters are kept and forwarded (``extra="allow"``): the
provider's llama.cpp server decides what it supports.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from proxy_router.consumer.errors import ApiError, bad_request


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
    model_config = ConfigDict(extra="forbid")
    sessionDuration: int = Field(600, ge=300, le=7 * 24 * 3600)


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
