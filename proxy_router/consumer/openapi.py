"""The consumer API's route table type and its OpenAPI 3.1 document.

``api.py`` declares every route once as a ``Route``; the app is registered from
that table and ``build_document`` turns the same table into ``/openapi.json``,
with the schemas of the pydantic models the handlers use (pydantic emits JSON
Schema 2020-12, which OpenAPI 3.1 uses as is). A route cannot exist
undocumented, and a body cannot differ from its documented schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from proxy_router import __version__
from proxy_router.consumer.access import (
    COOKIE,
    REQUEST_ID_HEADER,
    SESSION_HEADERS,
    Access,
    AccessPolicy,
)
from proxy_router.consumer.errors import ErrorResponse
from proxy_router.logs import REQUEST_ID_PATTERN

Media = Literal["json", "html", "text", "file"]
REF = "#/components/schemas/{model}"
ID32_PATTERN = r"^(0x)?[0-9a-fA-F]{64}$"

STATUS_TEXT = {
    200: "OK", 201: "Created", 204: "No Content", 400: "Invalid request",
    401: "A credential is required (see the security schemes)",
    402: "Not enough MOR for the stake", 403: "Refused (origin or wallet not allowed)",
    404: "Not found", 413: "The request does not fit one sealed MOR-RPC frame",
    409: "Conflict with the chain's state (closed, expired, reverted)",
    429: "The provider has no free capacity", 502: "The chain or the provider failed",
    503: "The chain or every provider is unavailable, or a component is unhealthy",
    504: "The provider did not answer in time",
}

PATH_PARAMS: dict[str, dict[str, Any]] = {
    "model": {"description": "on-chain model name or 0x model id", "schema": {"type": "string"}},
    "bid": {"description": "bid id (32 bytes, hex)",
            "schema": {"type": "string", "pattern": ID32_PATTERN}},
    "session": {"description": "session id (32 bytes, hex)",
                "schema": {"type": "string", "pattern": ID32_PATTERN}},
    "filename": {"description": "a file of the web app", "schema": {"type": "string"}},
}


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["query", "header"]
    description: str
    pattern: str | None = None


WEI_PATTERN = r"^[0-9]+$"
REQUEST_ID_PARAM = {
    "name": REQUEST_ID_HEADER, "in": "header", "required": False,
    "description": "your id for this request, echoed in the response and written in the "
                   "consumer's log lines of it: 1 to 128 of A-Z a-z 0-9 . _ : + / = -; "
                   "any other value is replaced by a new id (the request is still served)",
    "schema": {"type": "string"}}
RESPONSE_HEADERS: dict[str, dict[str, Any]] = {
    REQUEST_ID_HEADER: {
        "description": "the client's X-Request-Id when well-formed, else a new req_<hex> "
                       "id; every log line of the request carries it",
        "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN}},
    SESSION_HEADERS[0]: {
        "description": "the session (32 bytes, hex) this answer was paid from",
        "schema": {"type": "string", "pattern": ID32_PATTERN}},
    SESSION_HEADERS[1]: {
        "description": "its price: MOR wei per second of session, from opening to close",
        "schema": {"type": "string", "pattern": WEI_PATTERN}},
    SESSION_HEADERS[2]: {
        "description": "MOR wei the session has cost so far: its price times the seconds "
                       "since it opened, when the headers were sent (a stream's first "
                       "token, a whole answer's end); it keeps growing until the session "
                       "is closed (Morpheus stake mode: paid by the emission, not the "
                       "wallet)",
        "schema": {"type": "string", "pattern": WEI_PATTERN}},
}


@dataclass(frozen=True)
class Route:
    """One route: how it is served (``handler``, ``access``) and documented."""

    method: Literal["GET", "POST"]
    path: str
    handler: str
    """Name of the ``ConsumerApi`` method serving it."""
    summary: str
    access: Access
    tag: str
    returns: type[BaseModel] | None = None
    many: bool = False
    """The body is a JSON array of ``returns``."""
    status: int = 200
    media: Media = "json"
    stream: type[BaseModel] | None = None
    """With ``stream: true`` the answer is ``text/event-stream`` of these (then ``[DONE]``)."""
    body: type[BaseModel] | None = None
    body_required: bool = True
    params: tuple[Param, ...] = ()
    headers: tuple[str, ...] = ()
    """Response headers (of ``RESPONSE_HEADERS``) on success; X-Request-Id is on all."""
    errors: tuple[int, ...] = ()
    extra_responses: dict[int, type[BaseModel]] = field(default_factory=dict)

    @property
    def template(self) -> str:
        """The path as OpenAPI and aiohttp's ``canonical`` write it: ``{name:re}`` → ``{name}``."""
        return re.sub(r"{(\w+):[^}]+}", r"{\1}", self.path)


def build_document(routes: tuple[Route, ...], policy: AccessPolicy) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` as this consumer enforces ``policy``."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    for route in routes:
        if route.body is not None:
            wanted.append((route.body, "validation"))
        for model in (route.returns, route.stream, *route.extra_responses.values()):
            if model is not None:
                wanted.append((model, "serialization"))
    refs, defs = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF)

    def ref(model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> dict[str, Any]:
        return dict(refs[(model, mode)])

    schemes = _security_schemes(policy)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(
            route, ref, schemes, policy)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "proxy-router consumer API",
            "version": __version__,
            "description": "A local OpenAI-compatible endpoint backed by MOR-settled "
                           "inference sessions, and the marketplace's REST API. Amounts "
                           "are wei as decimal strings.",
        },
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}), "securitySchemes": schemes},
    }


def _security_schemes(policy: AccessPolicy) -> dict[str, Any]:
    schemes: dict[str, Any] = {}
    if policy.token is not None:
        schemes["bearerAuth"] = {
            "type": "http", "scheme": "bearer",
            "description": "API_TOKEN, or the token the consumer generated at startup in "
                           "<PROXY_STORAGE_PATH>/api-token when no credential is configured"}
    if policy.basic is not None:
        schemes["basicAuth"] = {"type": "http", "scheme": "basic",
                                "description": "API_BASIC_AUTH (user:password)"}
    if policy.generated:
        schemes["cookieAuth"] = {
            "type": "apiKey", "in": "cookie", "name": COOKIE,
            "description": "set by GET / for a loopback Host; same-origin requests only"}
    return schemes


def _operation(route: Route, ref: Any, schemes: dict[str, Any],
               policy: AccessPolicy) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.handler, "summary": route.summary,
                          "tags": [route.tag]}
    params = [{"name": name, "in": "path", "required": True, **PATH_PARAMS[name]}
              for name in re.findall(r"{(\w+)}", route.template)]
    params += [{"name": p.name, "in": p.where, "required": False,
                "description": p.description,
                "schema": {"type": "string", **({"pattern": p.pattern} if p.pattern else {})}}
               for p in route.params]
    op["parameters"] = [*params, REQUEST_ID_PARAM]
    if route.body is not None:
        op["requestBody"] = {"required": route.body_required, "content": {
            "application/json": {"schema": ref(route.body, "validation")}}}

    needs_credential = route.access is Access.WALLET or (
        route.access is Access.LOCAL and not policy.generated)
    if needs_credential:
        op["security"] = [{name: []} for name in schemes]
    elif route.access is Access.LOCAL:
        op["security"] = [{}, *({name: []} for name in schemes)]
    else:
        op["security"] = []

    responses: dict[str, Any] = {str(route.status): {
        "description": STATUS_TEXT.get(route.status, "OK"), "content": _content(route, ref)}}
    for status, model in route.extra_responses.items():
        responses[str(status)] = {"description": STATUS_TEXT[status],
                                  "content": {"application/json": {"schema": ref(model)}}}
    errors = set(route.errors)
    if route.access is not Access.PUBLIC:
        errors |= {401, 403}
    for status in sorted(errors):
        responses[str(status)] = {"description": STATUS_TEXT[status],
                                  "content": {"application/json": {"schema": ref(
                                      ErrorResponse)}}}
    for response in responses.values():
        response["headers"] = {REQUEST_ID_HEADER: _header(REQUEST_ID_HEADER)}
    responses[str(route.status)]["headers"].update(
        {name: _header(name) for name in route.headers})
    if 401 in errors:
        responses["401"]["headers"]["WWW-Authenticate"] = {
            "description": "the accepted schemes", "schema": {"type": "string"}}
    op["responses"] = responses
    return op


def _header(name: str) -> dict[str, Any]:
    return {"required": True, **RESPONSE_HEADERS[name]}


def _content(route: Route, ref: Any) -> dict[str, Any]:
    if route.media == "html":
        return {"text/html": {"schema": {"type": "string"}}}
    if route.media == "text":
        return {"text/plain": {"schema": {"type": "string"}}}
    if route.media == "file":
        return {"*/*": {"schema": {"type": "string"}}}
    if route.returns is None:
        return {"application/json": {"schema": {"type": "object"}}}
    schema = ref(route.returns)
    json_content = {"application/json": {"schema": {"type": "array", "items": schema}
                                         if route.many else schema}}
    if route.stream is not None:
        # One schema per event (OpenAPI 3.1 reading): its data is a JSON chunk, an error
        # if the provider fails mid-answer, or the final [DONE].
        json_content["text/event-stream"] = {"schema": {
            "type": "object", "required": ["data"],
            "properties": {"event": {"type": "string"}, "data": {"anyOf": [
                {"const": "[DONE]"},
                {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"anyOf": [ref(route.stream), ref(ErrorResponse)]}}]}}}}
    return json_content
