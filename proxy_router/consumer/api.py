"""The consumer's HTTP API: OpenAI-compatible chat + marketplace REST.

``/v1/chat/completions`` and ``/v1/models`` follow OpenAI's shapes and error
format so any OpenAI client works unchanged; ``/blockchain/...`` exposes the
market, the wallet and session control. ``ROUTES`` is the one table of routes:
the app is registered from it and ``/openapi.json`` documents it, and every JSON
body is built through the pydantic models of ``schemas.py``.

Cost is in the open: every response carries ``X-Request-Id`` (also in the log lines
of its request), and a chat answer the session it was paid from, that session's
price per second and its cost so far (``SESSION_HEADERS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel

from proxy_router.chain.flavor import to_bytes32
from proxy_router.chain.morpheus import MorpheusMarketplace
from proxy_router.chain.types import Model
from proxy_router.consumer.access import (
    REQUEST_ID_HEADER,
    ROUTE_ACCESS,
    SESSION_HEADERS,
    Access,
    AccessPolicy,
)
from proxy_router.consumer.chat import ChatService, PromptRequest, Reply
from proxy_router.consumer.domain_errors import BadProviderResponse, ProviderUnavailable
from proxy_router.consumer.errors import ApiError, internal_error, rule_for, to_api_error
from proxy_router.consumer.failover import Verdict, verdict
from proxy_router.consumer.openapi import Param, Route, build_document
from proxy_router.consumer.prompt_schemas import (
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    TextCompletion,
    TextCompletionChunk,
    client_embeddings,
)
from proxy_router.consumer.schemas import (
    Balance,
    Bid,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    LocalSession,
    MarketModel,
    ModelList,
    OnChainSession,
    OpenAIModel,
    OpenSessionRequest,
    Provider,
    RatedBid,
    Settlement,
    Usage,
    Withdrawal,
    parse_body,
)
from proxy_router.consumer.sessions import ConsumerSession, SessionManager, public_row
from proxy_router.consumer.sse import ClientEvents, first_event, for_client
from proxy_router.health import Health, health_response
from proxy_router.logs import request_id
from proxy_router.metrics import CLIENT_GONE, CLIENT_LEFT, Metrics
from proxy_router.morrpc import RpcError, RpcUnavailable
from proxy_router.netguard import read_body

log = structlog.get_logger(__name__)

WEB_DIR = Path(__file__).with_name("web")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC, LOCAL, WALLET = Access.PUBLIC, Access.LOCAL, Access.WALLET
CHAIN = (502, 503)  # a chain read can fail
REQUEST_ID = web.RequestKey("request_id", str)
T = TypeVar("T")

SESSION_PARAMS = (Param("session_id", "header", "use this open session of the wallet",
                        r"^(0x)?[0-9a-fA-F]{64}$"),
                  Param("X-Session-Id", "header", "same as session_id",
                        r"^(0x)?[0-9a-fA-F]{64}$"))

ROUTES: tuple[Route, ...] = (
    Route("GET", "/", "web_app", "The marketplace web app (sets the API cookie for a "
          "loopback Host)", PUBLIC, "system", media="html"),
    Route("GET", "/static/{filename:.+}", "static_file", "The web app's files", PUBLIC,
          "system", media="file", errors=(400, 404)),
    Route("GET", "/openapi.json", "openapi", "This document", PUBLIC, "system",
          media="json"),
    Route("GET", "/healthcheck", "healthcheck", "Component health: 200 ok, 503 degraded",
          PUBLIC, "system", returns=Health, extra_responses={503: Health}),
    Route("GET", "/metrics", "prometheus_metrics", "Prometheus metrics", PUBLIC, "system",
          media="text"),
    Route("POST", "/v1/chat/completions", "chat_completions",
          "OpenAI chat completion through a paid session (opened when needed)", LOCAL,
          "openai", returns=ChatCompletion, stream=ChatCompletionChunk, body=ChatRequest,
          params=SESSION_PARAMS, headers=SESSION_HEADERS,
          errors=(400, 402, 404, 409, 429, 502, 503, 504)),
    Route("POST", "/v1/completions", "completions",
          "OpenAI legacy (text) completion through a paid session (opened when needed)",
          LOCAL, "openai", returns=TextCompletion, stream=TextCompletionChunk,
          body=CompletionRequest, params=SESSION_PARAMS, headers=SESSION_HEADERS,
          errors=(400, 402, 404, 409, 413, 429, 502, 503, 504)),
    Route("POST", "/v1/embeddings", "embeddings",
          "OpenAI embeddings from a model tagged `embedding`, through a paid session",
          LOCAL, "openai", returns=EmbeddingList, body=EmbeddingRequest,
          params=SESSION_PARAMS, headers=SESSION_HEADERS,
          errors=(400, 402, 404, 409, 413, 429, 502, 503, 504)),
    Route("GET", "/v1/models", "list_models", "Marketplace models with an active bid", LOCAL,
          "openai", returns=ModelList),
    Route("GET", "/v1/models/{model}", "get_model", "One marketplace model, by name or id",
          LOCAL, "openai", returns=OpenAIModel, errors=(404,)),
    Route("GET", "/blockchain/balance", "balance", "The wallet's ETH and MOR", LOCAL,
          "wallet", returns=Balance, errors=CHAIN),
    Route("GET", "/blockchain/providers", "providers", "Registered providers", LOCAL,
          "market", returns=Provider, many=True),
    Route("GET", "/blockchain/models", "models", "Registered models", LOCAL, "market",
          returns=MarketModel, many=True),
    Route("GET", "/blockchain/bids", "bids", "Active bids", LOCAL, "market", returns=Bid,
          many=True, params=(Param("modelId", "query", "only bids for this model "
                                   "(name or 0x id)"),), errors=(404,)),
    Route("GET", "/blockchain/models/{model}/bids", "model_bids", "Active bids for a model",
          LOCAL, "market", returns=Bid, many=True, errors=(404,)),
    Route("GET", "/blockchain/models/{model}/bids/rated", "rated_bids",
          "A model's active bids, best first", LOCAL, "market", returns=RatedBid, many=True,
          errors=(404, *CHAIN)),
    Route("POST", "/blockchain/models/{model}/session", "open_by_model",
          "Open a session (escrow MOR) on the model's best-rated bid", WALLET, "sessions",
          returns=LocalSession, status=201, body=OpenSessionRequest, body_required=False,
          errors=(400, 402, 404, 409, *CHAIN)),
    Route("POST", "/blockchain/bids/{bid}/session", "open_by_bid",
          "Open a session (escrow MOR) on this bid", WALLET, "sessions",
          returns=LocalSession, status=201, body=OpenSessionRequest, body_required=False,
          errors=(400, 402, 404, 409, 429, *CHAIN)),
    Route("GET", "/blockchain/sessions", "my_sessions", "Sessions this consumer opened",
          LOCAL, "sessions", returns=LocalSession, many=True),
    Route("GET", "/blockchain/sessions/{session}", "get_session",
          "A session as the contract sees it", LOCAL, "sessions", returns=OnChainSession,
          errors=(400, 404, *CHAIN)),
    Route("POST", "/blockchain/sessions/{session}/close", "close_session",
          "Settle a session on chain: the provider is paid, the rest refunded", WALLET,
          "sessions", returns=Settlement, errors=(400, 403, 404, 409, *CHAIN)),
    Route("POST", "/blockchain/stakes/withdraw", "withdraw_held",
          "Morpheus: take back the stakes held since an early close, once released",
          WALLET, "wallet", returns=Withdrawal, errors=(409, *CHAIN)),
)


def dump(model: type[BaseModel], value: Any) -> Any:
    """``value`` (a dict, or a list of dicts) as JSON-ready data shaped by ``model``."""
    if isinstance(value, list):
        return [model.model_validate(v).model_dump(mode="json") for v in value]
    return model.model_validate(value).model_dump(mode="json")


def json_response(model: type[BaseModel], value: Any, *, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(dump(model, value), status=status, headers=headers)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler
                                ) -> web.StreamResponse:
    """Name the request: the client's ``X-Request-Id`` when well-formed, else a new id,
    bound to every log line logged while it is served (``send_request_id`` puts it
    on the response), so a client's report and our logs meet."""
    request[REQUEST_ID] = request_id(request.headers.get(REQUEST_ID_HEADER))
    with structlog.contextvars.bound_contextvars(request_id=request[REQUEST_ID]):
        return await handler(request)


async def send_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response has the id, errors and streams too."""
    response.headers[REQUEST_ID_HEADER] = request.get(REQUEST_ID) or request_id(None)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes one OpenAI-shaped error, through ``errors.HTTP_ERRORS``."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "not_found" if exc.status == 404 else "http_error"
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow",)}
        return ApiError(exc.status, code, exc.reason or "error", headers=headers).response()
    except ConnectionResetError:
        if request.transport is None or request.transport.is_closing():
            raise  # the client went away (e.g. mid-stream): nobody to answer
        log.exception("unhandled_error", path=request.path)
        return internal_error().response()
    except Exception as exc:
        rule = rule_for(exc)
        if rule is None:
            log.exception("unhandled_error", path=request.path)
            return internal_error().response()
        if rule.log:
            log.warning(rule.log, path=request.path, error=str(exc))
        return rule.api_error(exc).response()


class ConsumerApi:
    def __init__(self, sessions: SessionManager, chat: ChatService, *,
                 access: AccessPolicy, metrics: Metrics, body_timeout_s: float = 30.0) -> None:
        self.sessions = sessions
        self.chat = chat
        self.index = sessions.index
        self.market = sessions.market
        self.access = access
        self.metrics = metrics
        self.body_timeout_s = body_timeout_s
        self.started = time.time()
        self._document = json.dumps(build_document(ROUTES, access)).encode()

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[request_id_middleware, self.metrics.middleware,
                         self.access.cors_preflight, error_middleware, self.access.middleware],
            client_max_size=8 * 1024 * 1024)
        app.on_response_prepare.append(send_request_id)
        app.on_response_prepare.append(self.access.cors_headers)
        app[ROUTE_ACCESS] = {
            app.router.add_route(route.method, route.path, getattr(self, route.handler)):
                route.access
            for route in ROUTES}
        return app

    # -- system ------------------------------------------------------------------

    async def web_app(self, request: web.Request) -> web.FileResponse:
        """The marketplace web app: static files that use only this API."""
        response = web.FileResponse(WEB_DIR / "index.html")
        self.access.issue_cookie(request, response)
        return response

    async def static_file(self, request: web.Request) -> web.FileResponse:
        name = request.match_info["filename"]
        malformed = ApiError(400, "invalid_path", "malformed file name", param="filename")
        if "\x00" in name:  # NUL makes every os call raise: no path can hold it
            raise malformed
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):  # legal, but none of ours
            raise ApiError(404, "not_found", "no such file", param="filename")
        root = WEB_DIR.resolve()
        try:
            path = (root / name).resolve()
            found = path.is_relative_to(root) and path.is_file()
        except (ValueError, OSError):  # e.g. ENAMETOOLONG from stat: the client's fault
            raise malformed from None
        if not found:
            raise ApiError(404, "not_found", "no such file", param="filename")
        return web.FileResponse(path)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._document, content_type="application/json")

    async def healthcheck(self, request: web.Request) -> web.Response:
        return health_response(self.index, self.started)

    async def prometheus_metrics(self, request: web.Request) -> web.Response:
        return await self.metrics.handler(request)

    # -- OpenAI ------------------------------------------------------------------

    def _openai_model(self, model: Model) -> OpenAIModel:
        return OpenAIModel(id=model.name, created=model.created_at, owned_by=model.owner,
                           modelId=model.id, tags=list(model.tags),
                           activeBids=len(self.index.active_bids(model.id)))

    async def list_models(self, request: web.Request) -> web.Response:
        data = [self._openai_model(model)
                for model in sorted(self.index.models.values(), key=lambda m: m.created_at)
                if not model.is_deleted and self.index.active_bids(model.id)]
        return web.json_response(ModelList(data=data).model_dump(mode="json"))

    async def get_model(self, request: web.Request) -> web.Response:
        """``models.retrieve``: a model with or without bids (``activeBids`` says)."""
        model = self.chat.resolve_model(request.match_info["model"])
        return web.json_response(self._openai_model(model).model_dump(mode="json"))

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._prompt(request, ChatRequest)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._prompt(request, CompletionRequest)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._prompt(request, EmbeddingRequest)

    async def _prompt(self, request: web.Request, kind: type[PromptRequest]
                      ) -> web.StreamResponse:
        """One paid answer of ``kind``: whole, or streamed as the provider sends it."""
        req = parse_body(kind, await read_body(request, self.body_timeout_s))
        header = request.headers.get("session_id", request.headers.get("X-Session-Id"))
        session_id = None if header is None else _id32(header, "session", param="session_id")
        if not req.stream:
            try:
                answer, session = await _unless_client_leaves(
                    request, self.chat.complete(req, session_id))
            except ClientLeft:
                request[CLIENT_LEFT] = True
                log.info("request_abandoned_by_client")
                return web.Response(status=CLIENT_GONE)  # nobody reads it; the metric's 499
            if isinstance(req, EmbeddingRequest) and isinstance(answer, EmbeddingList):
                try:
                    answer = client_embeddings(answer, req.encoding_format)
                except ValueError:
                    raise BadProviderResponse(f"provider {session.provider} sent "
                                              "malformed embeddings") from None
            return web.json_response(answer.model_dump(mode="json", exclude_unset=True),
                                     headers=self._session_headers(session))
        reply = await self.chat.start(req, session_id)
        headers = self._session_headers(reply.session)
        try:
            return await self._stream(request, req, reply, headers)
        finally:
            await reply.aclose()

    def _session_headers(self, session: ConsumerSession) -> dict[str, str]:
        """What pays for the answer: the session, its price in MOR wei per second and
        what it has cost so far (as of now: a whole answer's end, a stream's first token),
        so a client sees its spending without asking the chain."""
        session_id, price, cost = SESSION_HEADERS
        return {session_id: session.session_id, price: str(session.price_per_second),
                cost: str(session.cost_so_far(self.index.chain_now()))}

    async def _stream(self, request: web.Request, req: PromptRequest, reply: Reply,
                      headers: dict[str, str]) -> web.StreamResponse:
        try:
            head = await _opening(reply)
        except (RpcError, RpcUnavailable) as exc:
            # No token has been sent, nor any header: the client gets the error as a
            # non-streamed request would (its status, its message), not a broken stream.
            if verdict(exc) is Verdict.FAIL_OVER:
                self.chat.drop(reply.session)
            raise
        resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        try:
            await resp.prepare(request)
            await _relay(self.chat, request, resp, req, reply, head)
        except ConnectionResetError:
            # The client closed the stream: an ordinary end, so no error and no traceback
            # (the metrics count a 499). The provider is told to stop now (rpc.cancel),
            # not when this stream is collected, and before the session's turn is given
            # back, so its backend stops generating and the next prompt finds it free.
            await reply.aclose()
            request[CLIENT_LEFT] = True
            log.info("stream_closed_by_client", session=reply.session.session_id)
        return resp

    # -- market ------------------------------------------------------------------

    async def balance(self, request: web.Request) -> web.Response:
        address = self.sessions.account.address
        available = held = 0
        if isinstance(self.market, MorpheusMarketplace):
            available, held = await self.market.held_stakes(address)
        return json_response(Balance, {"address": address,
                                       "eth": await self.market.eth_balance(address),
                                       "mor": await self.market.mor_balance(address),
                                       "flavor": self.market.flavor, "morHeld": held,
                                       "morWithdrawable": available})

    async def withdraw_held(self, request: web.Request) -> web.Response:
        if not isinstance(self.market, MorpheusMarketplace):
            raise ApiError(409, "nothing_held", "this marketplace refunds at close and holds "
                           "no stake")
        address = self.sessions.account.address
        available, _ = await self.market.held_stakes(address)
        if not available:
            raise ApiError(409, "nothing_released", "no held stake is released yet (holds "
                           "end at the UTC midnight after the early close)")
        tx = await self.market.withdraw_held()
        _, still = await self.market.held_stakes(address)
        return json_response(Withdrawal, {"tx": tx.tx_hash, "amount": available,
                                          "stillHeld": still})

    async def providers(self, request: web.Request) -> web.Response:
        rows = [p.to_json() for p in self.index.providers.values() if not p.is_deleted]
        return json_response(Provider, rows)

    async def models(self, request: web.Request) -> web.Response:
        rows = [m.to_json() for m in self.index.models.values() if not m.is_deleted]
        return json_response(MarketModel, rows)

    async def bids(self, request: web.Request) -> web.Response:
        model = request.query.get("modelId")
        model_id = self.chat.resolve_model(model).id if model else None
        return json_response(Bid, [b.to_json() for b in self.index.active_bids(model_id)])

    async def model_bids(self, request: web.Request) -> web.Response:
        model_id = self.chat.resolve_model(request.match_info["model"]).id
        return json_response(Bid, [b.to_json() for b in self.index.active_bids(model_id)])

    async def rated_bids(self, request: web.Request) -> web.Response:
        model_id = self.chat.resolve_model(request.match_info["model"]).id
        rated = await self.sessions.rated_bids(model_id)
        return json_response(RatedBid, [r.as_json() for r in rated])

    async def open_by_model(self, request: web.Request) -> web.Response:
        body = parse_body(OpenSessionRequest, await read_body(request, self.body_timeout_s))
        model_id = self.chat.resolve_model(request.match_info["model"]).id
        session = await self.sessions.open_for_model(model_id, body.sessionDuration)
        return json_response(LocalSession, session.public(), status=201)

    async def open_by_bid(self, request: web.Request) -> web.Response:
        body = parse_body(OpenSessionRequest, await read_body(request, self.body_timeout_s))
        bid_id = _id32(request.match_info["bid"], "bid")
        bid = await self.sessions.find_bid(bid_id)
        session = await self.sessions.open_for_bid(bid, body.sessionDuration)
        return json_response(LocalSession, session.public(), status=201)

    async def my_sessions(self, request: web.Request) -> web.Response:
        rows = await self.sessions.store.consumer_sessions()
        return json_response(LocalSession, [public_row(row) for row in rows])

    async def get_session(self, request: web.Request) -> web.Response:
        session_id = _id32(request.match_info["session"], "session")
        onchain = await self.sessions.chain_session(session_id)
        now = self.index.chain_now()
        return json_response(OnChainSession, {**onchain.to_json(),
                                              "secondsLeft": onchain.seconds_left(now),
                                              "costSoFar": onchain.cost_so_far(now)})

    async def close_session(self, request: web.Request) -> web.Response:
        session_id = _id32(request.match_info["session"], "session")
        return json_response(Settlement, await self.sessions.close(session_id))


LEFT_POLL_S = 0.25
"""How often a non-streamed request checks that its client is still there."""


class ClientLeft(Exception):
    """The client closed its connection before its whole answer was ready."""


async def _unless_client_leaves(request: web.Request, work: Awaitable[T]) -> T:
    """``work``, cancelled when the client's connection closes.

    aiohttp lets a handler run on after its client left (handler cancellation is off,
    rightly for the routes that send transactions), so a non-streamed answer would be
    generated, and its seconds paid for, for nobody: an SDK that times out retries, and
    each abandoned attempt kept a slot busy. Cancelled, ``ChatService.complete`` sends
    ``rpc.cancel`` before the session's turn is given back, as a closed stream does.
    Polled: aiohttp has no disconnect event."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait([task], timeout=LEFT_POLL_S)
            if done:
                return task.result()
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ClientLeft
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _relay(chat: ChatService, request: web.Request, resp: web.StreamResponse,
                 req: PromptRequest, reply: Reply, head: list[bytes]) -> None:
    """The provider's chunks to the client, then [DONE]; ``ConnectionResetError``
    once the client is gone. The opening chunks go through aiohttp's writer (they
    carry the headers); the rest is relayed from the MOR-RPC socket's reader
    (``ClientEvents``), the consumer's per-token path."""
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    saw_usage = False
    try:
        for chunk in head:
            chunk, saw = for_client(chunk, include_usage)
            saw_usage |= saw
            if chunk:
                await resp.write(chunk)
        events = ClientEvents(request, resp, include_usage=include_usage)
        await reply.stream.relay(events)
        saw_usage |= events.saw_usage
    except (RpcError, RpcUnavailable) as exc:
        # Text already reached the client, so no retry: end the stream with the
        # error, and stop using a provider that broke mid-answer.
        if verdict(exc) is Verdict.FAIL_OVER:
            chat.drop(reply.session)
        shown = exc if isinstance(exc, RpcError) else ProviderUnavailable(str(exc))
        await resp.write(to_api_error(shown).sse())
    else:
        chat.finished(reply)
        usage = reply.usage
        if include_usage and not saw_usage and usage:
            first = first_event(reply.first)
            final = ChatCompletionChunk(
                id=first.get("id", ""), object=first.get("object") or "chat.completion.chunk",
                created=first.get("created", 0),
                model=first.get("model", ""), choices=[], usage=Usage(
                    prompt_tokens=usage["prompt_tokens"],
                    completion_tokens=usage["completion_tokens"],
                    total_tokens=usage["prompt_tokens"] + usage["completion_tokens"]))
            await resp.write(b"data: " + final.model_dump_json().encode() + b"\n\n")
    await resp.write_eof(b"data: [DONE]\n\n")


_MAX_OPENING_CHUNKS = 4
_TOKEN_FIELDS = ("content", "tool_calls", "function_call", "refusal", "reasoning_content")


async def _opening(reply: Reply) -> list[bytes]:
    """A stream's chunks up to the first that carries a token (a few at most).

    A backend may open with a role-only delta and fail right after; read that far
    before any header is sent, so such a failure still becomes an HTTP error. Every
    backend we know sends its first token in its first or second chunk."""
    head = [reply.first]
    while len(head) < _MAX_OPENING_CHUNKS and not _carries_token(head[-1]):
        chunk = await anext(reply.stream, None)
        if chunk is None:
            break
        head.append(chunk)
    return head


def _carries_token(chunk: bytes) -> bool:
    """Whether an SSE chunk holds more than an opening: a token, a finish, or anything
    that is not a chat chunk (passed on as it is, and checked there)."""
    for raw in chunk.split(b"\n\n"):
        if not raw:
            continue
        choices = first_event(raw).get("choices") if raw.startswith(b"data: ") else None
        if not isinstance(choices, list) or not choices:
            return True
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict) or choice.get("finish_reason") or any(
                    delta.get(key) for key in _TOKEN_FIELDS):
                return True
    return False


def _id32(value: str, what: str, *, param: str | None = None) -> str:
    try:
        return "0x" + to_bytes32(value).hex()
    except ValueError:
        raise ApiError(400, f"invalid_{what}_id", f"{what} id must be 0x + 64 hex digits",
                       param=param or what) from None
