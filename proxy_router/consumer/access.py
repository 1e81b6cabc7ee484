"""Who may call the consumer API: credentials, CSRF and DNS-rebinding guards, CORS.

Every route has an access class (in the route table of ``api.py``):

- ``PUBLIC``: ``/healthcheck``, ``/metrics``, the web app and the API document.
- ``LOCAL``: the OpenAI endpoints and the market's read-only views. While no
  credential is configured (the API then listens on loopback only) loopback
  clients use them without one, like a local OpenAI server: an
  ``Authorization`` header is ignored (the OpenAI SDK always sends one), but a
  browser page from another origin may not POST (``Origin`` check) and a
  non-loopback ``Host`` (DNS rebinding) is refused. With ``API_TOKEN`` or
  ``API_BASIC_AUTH`` configured they need a credential.
- ``WALLET``: routes that move MOR (open and close sessions) always need a credential.

Credentials: ``Authorization: Bearer <API_TOKEN>``, HTTP basic auth with
``API_BASIC_AUTH``, or — when neither is configured — a random token generated
at startup and written to ``<PROXY_STORAGE_PATH>/api-token`` (mode 0600). The
web app served at ``/`` to a loopback ``Host`` receives that generated token as
an ``HttpOnly; SameSite=Strict`` cookie; a cookie-authenticated POST whose
``Origin`` is not the consumer's own is refused, so other local sites cannot
ride on it. Secrets are compared in constant time.

CORS is granted only to the origins in ``CORS_ORIGINS`` (no wildcard, no
cookies): preflights are answered here, and responses to allowed origins carry
``Access-Control-Allow-Origin`` (added in ``on_response_prepare`` so streamed
answers get it too), and let the page read the request id and the session's cost.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute
from yarl import URL

from proxy_router.config import Settings, is_loopback
from proxy_router.consumer.errors import ApiError

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TOKEN_FILE = "api-token"
COOKIE = "proxy_router_token"
REALM = "proxy-router"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REQUEST_ID_HEADER = "X-Request-Id"
SESSION_HEADERS = ("X-Session-Id", "X-Session-Price-Per-Second", "X-Session-Cost-So-Far")
"""On chat answers: the session that paid, its price and its cost so far (``api.py``)."""
CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = f"Authorization, Content-Type, session_id, X-Session-Id, {REQUEST_ID_HEADER}"
CORS_EXPOSE = ", ".join((REQUEST_ID_HEADER, *SESSION_HEADERS))
CORS_MAX_AGE = "600"
ROUTE_ACCESS = web.AppKey("route_access", dict[AbstractRoute, "Access"])


class Access(StrEnum):
    PUBLIC = "public"
    LOCAL = "local"
    WALLET = "wallet"


def token_path(storage: Path) -> Path:
    """Where a consumer without a configured credential writes its generated token."""
    return Path(storage) / TOKEN_FILE


def write_token(path: Path, token: str) -> None:
    """Write ``token`` readable by the owner only (created 0600, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    tmp.replace(path)


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class AccessPolicy:
    token: str | None
    """Accepted as ``Authorization: Bearer``: ``API_TOKEN`` or the generated token."""
    basic: str | None
    """``user:password`` accepted as HTTP basic auth (``API_BASIC_AUTH``)."""
    generated: bool
    """No credential is configured: ``token`` was generated and is also a cookie."""
    cors_origins: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        """The configured credentials, or a fresh token written under the storage path."""
        path = token_path(settings.proxy_storage_path)
        token = settings.api_token.get_secret_value() if settings.api_token else None
        basic = settings.api_basic_auth.get_secret_value() if settings.api_basic_auth else None
        if token or basic:
            path.unlink(missing_ok=True)  # a stale generated token must not look valid
            return cls(token, basic, False, settings.origins)
        token = secrets.token_urlsafe(32)
        write_token(path, token)
        log.info("api_token_written", path=str(path.resolve()),
                 hint="send it as 'Authorization: Bearer <token>' to open or close sessions")
        return cls(token, None, True, settings.origins)

    # -- middleware -----------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        if request.match_info.http_exception is not None:
            return await handler(request)  # 404 / 405: nothing to protect
        access = request.app[ROUTE_ACCESS].get(route, Access.WALLET)
        if access is Access.PUBLIC:
            return await handler(request)
        how = self.credential(request)
        if how is None:
            if access is Access.LOCAL and self.generated:
                self._check_anonymous(request)
                return await handler(request)
            raise self.unauthorized(request)
        if how == "cookie" and request.method not in SAFE_METHODS:
            origin = request.headers.get("Origin")
            if origin is not None and not self.own_origin(request, origin):
                raise ApiError(403, "origin_not_allowed",
                               f"a cookie-authenticated request from {origin} is refused; "
                               "only the consumer's own web app may use the cookie",
                               type_="permission_error")
        return await handler(request)

    def credential(self, request: web.Request) -> str | None:
        """``bearer``, ``basic`` or ``cookie`` when the request carries a valid credential."""
        scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and _same(value, self.token):
            return "bearer"
        if scheme.lower() == "basic" and self.basic is not None:
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            if _same(decoded, self.basic):
                return "basic"
        cookie = request.cookies.get(COOKIE)
        if self.generated and cookie is not None and _same(cookie, self.token):
            return "cookie"
        return None

    def unauthorized(self, request: web.Request) -> ApiError:
        if "Authorization" in request.headers:
            code, message = "invalid_api_key", "the credential provided is not valid"
        else:
            code, message = "missing_api_key", "this route needs a credential: " + (
                "send 'Authorization: Bearer <token>'; the token is in "
                "<PROXY_STORAGE_PATH>/api-token" if self.generated
                else "send the configured API_TOKEN as a bearer token or API_BASIC_AUTH")
        challenges = []
        if self.token is not None:
            challenges.append(f'Bearer realm="{REALM}"')
        if self.basic is not None:
            challenges.append(f'Basic realm="{REALM}", charset="UTF-8"')
        return ApiError(401, code, message,
                        headers={"WWW-Authenticate": ", ".join(challenges)})

    def _check_anonymous(self, request: web.Request) -> None:
        """Credential-less use is for loopback clients, never for other sites' pages."""
        if not is_loopback(_hostname(request.host)):
            raise self.unauthorized(request)
        origin = request.headers.get("Origin")
        if request.method not in SAFE_METHODS and origin is not None and not (
                self.own_origin(request, origin) or origin.lower() in self.cors_origins):
            raise ApiError(403, "origin_not_allowed",
                           f"requests from the web origin {origin} are not allowed; "
                           "list it in CORS_ORIGINS", type_="permission_error")

    # -- the web app's cookie -------------------------------------------------------------------

    def issue_cookie(self, request: web.Request, response: web.StreamResponse) -> None:
        """Give the same-origin web app the generated token, to loopback Hosts only."""
        if self.generated and self.token is not None and self.own_host(request, request.host):
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")

    @staticmethod
    def own_host(request: web.Request, host: str) -> bool:
        """``host`` (a Host header) is a loopback name with the port this request came in on."""
        try:
            return _here(request, URL(f"http://{host}"))
        except ValueError:
            return False

    @staticmethod
    def own_origin(request: web.Request, origin: str) -> bool:
        """``origin`` is the consumer's own: http, a loopback name, the port we listen on."""
        try:
            url = URL(origin)
        except ValueError:
            return False
        return url.scheme == "http" and url.path in ("", "/") and _here(request, url)

    # -- CORS ---------------------------------------------------------------------------------

    @web.middleware
    async def cors_preflight(self, request: web.Request, handler: Handler
                             ) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method != "OPTIONS" or origin is None or \
                "Access-Control-Request-Method" not in request.headers:
            return await handler(request)
        if origin.lower() not in self.cors_origins:
            return ApiError(403, "cors_origin_not_allowed",
                            f"the origin {origin} is not in CORS_ORIGINS",
                            type_="permission_error").response()
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": CORS_METHODS,
            "Access-Control-Allow-Headers": CORS_HEADERS,
            "Access-Control-Max-Age": CORS_MAX_AGE,
            "Vary": "Origin"})

    async def cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare``: allowed origins may read every response, streams too."""
        if not self.cors_origins or "Access-Control-Allow-Origin" in response.headers:
            return
        response.headers.add("Vary", "Origin")
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() in self.cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE


def _hostname(host: str) -> str:
    """The name in a ``Host`` header (``[::1]:8082`` → ``::1``); empty when malformed."""
    try:
        return URL(f"http://{host}").host or ""
    except ValueError:
        return ""


def _here(request: web.Request, url: URL) -> bool:
    """``url`` names this listener through a loopback name (the DNS-rebinding guard)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
    return is_loopback(url.host or "") and url.port == port
