"""The consumer's HTTP API: OpenAI-compatible chat + marketplace REST.

``/v1/chat/completions`` and ``/v1/models`` follow OpenAI's shapes and error
format so any OpenAI client works unchanged; ``/blockchain/...`` exposes the
market, the wallet and session control. Amounts are decimal strings (wei) so
JavaScript clients do not lose precision.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from proxy_router.chain.errors import ChainError, ChainUnavailable, ContractReverted
from proxy_router.chain.marketplace import to_bytes32
from proxy_router.consumer.chat import FAILOVER_CODES, ChatService, Reply
from proxy_router.consumer.errors import ApiError
from proxy_router.consumer.schemas import ChatRequest, OpenSessionRequest, parse_body
from proxy_router.consumer.sessions import SessionManager
from proxy_router.health import health_response
from proxy_router.rpc import RpcError, RpcUnavailable

log = structlog.get_logger(__name__)

WEB_DIR = Path(__file__).with_name("web")
AMOUNT_KEYS = {"stake", "pricePerSecond", "providerEarned", "userRefund", "held"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def wire(value: Any) -> Any:
    """JSON for clients: wei amounts as strings, recursively."""
    if isinstance(value, dict):
        return {k: (str(v) if k in AMOUNT_KEYS and isinstance(v, int) else wire(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [wire(v) for v in value]
    return value


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "not_found" if exc.status == 404 else "http_error"
        return ApiError(exc.status, code, exc.reason or "error").response()
    except ChainUnavailable as exc:
        return ApiError(503, "chain_unavailable", f"the chain RPC is unreachable: {exc}",
                        type_="api_error").response()
    except ContractReverted as exc:
        return ApiError(409, "transaction_reverted", f"the contract refused: {exc.reason}"
                        ).response()
    except ChainError as exc:
        return ApiError(502, "chain_error", str(exc), type_="api_error").response()
    except RpcError as exc:
        return ApiError.from_rpc(exc).response()
    except RpcUnavailable as exc:
        return ApiError(503, "provider_unavailable", str(exc), type_="api_error").response()
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return ApiError(500, "internal_error", "internal error", type_="api_error").response()


class ConsumerApi:
    def __init__(self, sessions: SessionManager, chat: ChatService) -> None:
        self.sessions = sessions
        self.chat = chat
        self.index = sessions.index
        self.market = sessions.market
        self.started = time.time()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[error_middleware], client_max_size=8 * 1024 * 1024)
        r = app.router
        r.add_get("/", self.web_app)
        r.add_static("/static", WEB_DIR, append_version=True)
        r.add_get("/healthcheck", self.healthcheck)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_get("/v1/models", self.list_models)
        r.add_get("/blockchain/balance", self.balance)
        r.add_get("/blockchain/providers", self.providers)
        r.add_get("/blockchain/models", self.models)
        r.add_get("/blockchain/bids", self.bids)
        r.add_get("/blockchain/models/{model}/bids", self.model_bids)
        r.add_get("/blockchain/models/{model}/bids/rated", self.rated_bids)
        r.add_post("/blockchain/models/{model}/session", self.open_by_model)
        r.add_post("/blockchain/bids/{bid}/session", self.open_by_bid)
        r.add_get("/blockchain/sessions", self.my_sessions)
        r.add_get("/blockchain/sessions/{session}", self.get_session)
        r.add_post("/blockchain/sessions/{session}/close", self.close_session)
        return app

    # -- system ------------------------------------------------------------------

    async def web_app(self, request: web.Request) -> web.FileResponse:
        """The marketplace web app: static files that use only this API."""
        return web.FileResponse(WEB_DIR / "index.html")

    async def healthcheck(self, request: web.Request) -> web.Response:
        return health_response(self.index, self.started)

    # -- OpenAI ------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        data = []
        for model in sorted(self.index.models.values(), key=lambda m: m.get("createdAt", 0)):
            bids = self.index.active_bids(model["id"])
            if model.get("isDeleted") or not bids:
                continue
            data.append({"id": model["name"], "object": "model",
                         "created": int(model.get("createdAt", 0)),
                         "owned_by": model.get("owner", ""), "modelId": model["id"],
                         "tags": model.get("tags", []), "activeBids": len(bids)})
        return web.json_response({"object": "list", "data": data})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        req = parse_body(ChatRequest, await request.read())
        session_id = request.headers.get("session_id") or request.headers.get("X-Session-Id")
        if not req.stream:
            body, session = await self.chat.complete(req, session_id)
            return web.json_response(body, headers={"X-Session-Id": session.session_id})
        reply = await self.chat.start(req, session_id)
        headers = {"X-Session-Id": reply.session.session_id}
        return await self._stream(request, req, reply, headers)

    async def _stream(self, request: web.Request, req: ChatRequest, reply: Reply,
                      headers: dict[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        first = json.loads(reply.first)
        saw_usage = False
        try:
            async for chunk in reply.chunks():
                if b'"usage":{' in chunk:
                    saw_usage = True
                    if not include_usage and b'"choices":[]' in chunk:
                        continue
                await resp.write(b"data: " + chunk + b"\n\n")
        except (RpcError, RpcUnavailable) as exc:
            # Text already reached the client, so no retry: end the stream with the
            # error, and stop using a provider that broke mid-answer.
            if isinstance(exc, RpcUnavailable) or exc.code in FAILOVER_CODES:
                self.chat.drop(reply.session)
            err = ApiError.from_rpc(exc) if isinstance(exc, RpcError) else ApiError(
                503, "provider_unavailable", str(exc), type_="api_error")
            await resp.write(err.sse())
        else:
            usage = reply.usage
            if include_usage and not saw_usage and usage:
                final = {"id": first.get("id"), "object": "chat.completion.chunk",
                         "created": first.get("created"), "model": first.get("model"),
                         "choices": [], "usage": {
                             "prompt_tokens": usage["prompt_tokens"],
                             "completion_tokens": usage["completion_tokens"],
                             "total_tokens": usage["prompt_tokens"]
                             + usage["completion_tokens"]}}
                await resp.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # -- market ------------------------------------------------------------------

    async def balance(self, request: web.Request) -> web.Response:
        address = self.sessions.account.address
        return web.json_response({"address": address,
                                  "eth": str(await self.market.eth_balance(address)),
                                  "mor": str(await self.market.mor_balance(address))})

    async def providers(self, request: web.Request) -> web.Response:
        rows = [p for p in self.index.providers.values() if not p.get("isDeleted")]
        return web.json_response(wire(rows))

    async def models(self, request: web.Request) -> web.Response:
        rows = [m for m in self.index.models.values() if not m.get("isDeleted")]
        return web.json_response(wire(rows))

    async def bids(self, request: web.Request) -> web.Response:
        model = request.query.get("modelId")
        model_id = self.chat.resolve_model(model)["id"] if model else None
        return web.json_response(wire(self.index.active_bids(model_id)))

    async def model_bids(self, request: web.Request) -> web.Response:
        model_id = self.chat.resolve_model(request.match_info["model"])["id"]
        return web.json_response(wire(self.index.active_bids(model_id)))

    async def rated_bids(self, request: web.Request) -> web.Response:
        model_id = self.chat.resolve_model(request.match_info["model"])["id"]
        rated = await self.sessions.rated_bids(model_id)
        return web.json_response(wire([r.as_json() for r in rated]))

    async def open_by_model(self, request: web.Request) -> web.Response:
        body = parse_body(OpenSessionRequest, await request.read())
        model_id = self.chat.resolve_model(request.match_info["model"])["id"]
        session = await self.sessions.open_for_model(model_id, body.sessionDuration)
        return web.json_response(session.public(), status=201)

    async def open_by_bid(self, request: web.Request) -> web.Response:
        body = parse_body(OpenSessionRequest, await request.read())
        bid_id = _id32(request.match_info["bid"], "bid")
        bid = self.index.bids.get(bid_id) or {**await self.market.get_bid(bid_id), "id": bid_id}
        if not bid.get("createdAt"):
            raise ApiError(404, "bid_not_found", f"bid {bid_id} does not exist", param="bid")
        session = await self.sessions.open_for_bid(bid, body.sessionDuration)
        return web.json_response(session.public(), status=201)

    async def my_sessions(self, request: web.Request) -> web.Response:
        rows = await self.sessions.store.consumer_sessions()
        return web.json_response([
            {k: v for k, v in row.items() if k != "session_key"} for row in rows])

    async def get_session(self, request: web.Request) -> web.Response:
        session_id = _id32(request.match_info["session"], "session")
        onchain = await self.market.get_session(session_id)
        if not onchain["openedAt"]:
            raise ApiError(404, "session_not_found", f"session {session_id} not found")
        now = self.sessions.chain_now()
        end = min(now, int(onchain["endsAt"])) if not onchain["closed"] else int(
            onchain["closedAt"])
        cost = max(0, end - int(onchain["openedAt"])) * int(onchain["pricePerSecond"])
        extra = {"id": session_id, "secondsLeft": max(0, int(onchain["endsAt"]) - now)
                 if not onchain["closed"] else 0,
                 "costSoFar": str(min(cost, int(onchain["stake"])))}
        return web.json_response(wire({**onchain, **extra}))

    async def close_session(self, request: web.Request) -> web.Response:
        session_id = _id32(request.match_info["session"], "session")
        return web.json_response(await self.sessions.close(session_id))


def _id32(value: str, what: str) -> str:
    try:
        return "0x" + to_bytes32(value).hex()
    except ValueError:
        raise ApiError(400, f"invalid_{what}_id", f"{what} id must be 0x + 64 hex digits",
                       param=what) from None
