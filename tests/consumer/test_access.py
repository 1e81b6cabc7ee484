"""Who may call the consumer API (``proxy_router.consumer.access``), through the real app.

Without a configured credential the API is a drop-in local OpenAI endpoint, but
routes that move MOR need the token the consumer generated at startup (or the
web app's same-origin cookie). With API_TOKEN or API_BASIC_AUTH every route but
/healthcheck, /metrics, the web app and the API document needs the credential.
"""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest

from proxy_router.consumer.access import COOKIE, token_path
from tests.consumer.conftest import SESSION_ID, AppFactory

CLOSE = f"/blockchain/sessions/{SESSION_ID}/close"
OPEN = "/blockchain/models/some-model/session"
CHAT = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
TOKEN = "s3cret-token-0123456789"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user_password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user_password.encode()).decode()}


async def assert_401(resp: Any, code: str, challenge: str = "Bearer") -> None:
    """Unauthorized in OpenAI's error shape, with a challenge naming the scheme."""
    assert resp.status == 401
    body = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["type"] == "invalid_request_error"
    assert challenge in resp.headers["WWW-Authenticate"]


def generated_token(tmp_path: Path) -> str:
    return token_path(tmp_path).read_text().strip()


# -- no credential configured (loopback only) ----------------------------------------------


async def test_a_random_token_is_written_owner_only_at_startup(app_factory: AppFactory,
                                                               tmp_path: Path):
    async with app_factory():
        path = token_path(tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        first = generated_token(tmp_path)
        assert len(first) >= 32
    async with app_factory():
        assert generated_token(tmp_path) != first  # a new one at every start


@pytest.mark.parametrize("path", ["/healthcheck", "/metrics", "/openapi.json", "/"])
async def test_health_metrics_the_document_and_the_web_app_are_open(app_factory: AppFactory,
                                                                    path: str):
    async with app_factory() as (client, _):
        resp = await client.get(path)
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("headers", [{}, bearer("sk-anything-the-sdk-sends")],
                         ids=["no-header", "openai-sdk-placeholder-key"])
async def test_the_openai_routes_and_market_views_need_no_credential_on_loopback(
        app_factory: AppFactory, headers: dict[str, str]):
    async with app_factory() as (client, _):
        for path in ("/v1/models", "/blockchain/balance", "/blockchain/models",
                     "/blockchain/sessions"):
            resp = await client.get(path, headers=headers)
            assert resp.status == 200, (path, await resp.text())
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert resp.status == 404  # past the access check: the model is unknown
        assert (await resp.json())["error"]["code"] == "model_not_found"


async def test_routes_that_move_mor_need_the_generated_token(app_factory: AppFactory,
                                                             tmp_path: Path):
    async with app_factory() as (client, sessions):
        await assert_401(await client.post(CLOSE), "missing_api_key")
        await assert_401(await client.post(OPEN, json={}), "missing_api_key")
        await assert_401(await client.post(f"/blockchain/bids/{SESSION_ID}/session"),
                         "missing_api_key")
        await assert_401(await client.post(CLOSE, headers=bearer("sk-wrong")),
                         "invalid_api_key")
        assert sessions.closed == []

        resp = await client.post(CLOSE, headers=bearer(generated_token(tmp_path)))
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["providerEarned"] == "1000000000000000"
        assert sessions.closed == [SESSION_ID]


async def test_the_web_app_gets_the_token_as_a_strict_http_only_cookie(app_factory: AppFactory,
                                                                       tmp_path: Path):
    async with app_factory() as (client, _):
        port = client.server.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            resp = await client.get("/", headers={"Host": host})
            cookie = resp.cookies[COOKIE]
            assert cookie.value == generated_token(tmp_path)
            assert cookie["httponly"] is True
            assert cookie["samesite"] == "Strict"
            assert cookie["path"] == "/"


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1:1", "127.0.0.1",
                                  "192.168.1.5:{port}"],
                         ids=["rebound-name", "other-port", "no-port", "lan-address"])
async def test_no_cookie_for_a_host_that_is_not_this_loopback_listener(app_factory: AppFactory,
                                                                       host: str):
    async with app_factory() as (client, _):
        resp = await client.get("/", headers={"Host": host.format(port=client.server.port)})
        assert resp.status == 200
        assert COOKIE not in resp.cookies
        assert "Set-Cookie" not in resp.headers


async def test_the_cookie_works_from_the_consumers_own_origin_only(app_factory: AppFactory,
                                                                   tmp_path: Path):
    async with app_factory() as (client, sessions):
        port = client.server.port
        cookie = {"Cookie": f"{COOKIE}={generated_token(tmp_path)}"}
        for origin in (None, f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            headers = {**cookie, **({"Origin": origin} if origin else {})}
            resp = await client.post(CLOSE, headers=headers)
            assert resp.status == 200, (origin, await resp.text())
        for origin in ("http://localhost:3000", f"https://127.0.0.1:{port}", "null",
                       f"http://evil.example:{port}"):
            resp = await client.post(CLOSE, headers={**cookie, "Origin": origin})
            assert resp.status == 403, origin
            assert (await resp.json())["error"]["code"] == "origin_not_allowed"
        assert len(sessions.closed) == 3
        await assert_401(await client.post(CLOSE, headers={"Cookie": f"{COOKIE}=guess"}),
                         "missing_api_key")


async def test_other_sites_pages_cannot_spend_through_the_open_chat_route(
        app_factory: AppFactory):
    async with app_factory() as (client, _):
        resp = await client.post("/v1/chat/completions", json=CHAT,
                                 headers={"Origin": "https://evil.example"})
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "origin_not_allowed"
        # DNS rebinding: the page's name resolves to 127.0.0.1, the Host header shows it.
        resp = await client.post("/v1/chat/completions", json=CHAT,
                                 headers={"Host": f"evil.example:{client.server.port}"})
        await assert_401(resp, "missing_api_key")
        resp = await client.get("/blockchain/balance", headers={"Host": "evil.example"})
        await assert_401(resp, "missing_api_key")
        resp = await client.get("/v1/models", headers={"Host": "[::1"})  # malformed
        await assert_401(resp, "missing_api_key")


# -- a configured credential ---------------------------------------------------------------


async def test_with_api_token_every_api_route_needs_it(app_factory: AppFactory,
                                                       tmp_path: Path):
    async with app_factory(api_token=TOKEN) as (client, sessions):
        assert not token_path(tmp_path).exists()
        for path in ("/v1/models", "/blockchain/balance", "/blockchain/sessions"):
            await assert_401(await client.get(path), "missing_api_key")
            await assert_401(await client.get(path, headers=bearer("sk-x")), "invalid_api_key")
            assert (await client.get(path, headers=bearer(TOKEN))).status == 200
        await assert_401(await client.post("/v1/chat/completions", json=CHAT),
                         "missing_api_key")
        assert (await client.post(CLOSE, headers=bearer(TOKEN))).status == 200
        for path in ("/healthcheck", "/metrics", "/openapi.json"):
            assert (await client.get(path)).status == 200
        resp = await client.get("/")  # the web app: no cookie carries a configured secret
        assert resp.status == 200 and COOKIE not in resp.cookies
        assert sessions.closed == [SESSION_ID]


async def test_a_stale_generated_token_is_removed_when_a_credential_is_configured(
        app_factory: AppFactory, tmp_path: Path):
    async with app_factory():
        stale = generated_token(tmp_path)
    async with app_factory(api_token=TOKEN) as (client, _):
        assert not token_path(tmp_path).exists()
        await assert_401(await client.post(CLOSE, headers=bearer(stale)), "invalid_api_key")
        await assert_401(await client.post(CLOSE, headers={"Cookie": f"{COOKIE}={stale}"}),
                         "missing_api_key")


async def test_basic_auth_from_api_basic_auth(app_factory: AppFactory):
    async with app_factory(api_basic_auth="alice:correct horse") as (client, _):
        await assert_401(await client.get("/v1/models"), "missing_api_key", "Basic")
        await assert_401(await client.get("/v1/models", headers=basic("alice:wrong")),
                         "invalid_api_key", "Basic")
        resp = await client.get("/v1/models", headers={"Authorization": "Basic !!!"})
        await assert_401(resp, "invalid_api_key", "Basic")
        assert (await client.get("/v1/models", headers=basic("alice:correct horse"))
                ).status == 200
        assert (await client.post(CLOSE, headers=basic("alice:correct horse"))).status == 200


# -- CORS ----------------------------------------------------------------------------------

APP_ORIGIN = "https://app.example.com"


async def test_a_preflight_from_a_listed_origin_is_answered_without_credentials(
        app_factory: AppFactory):
    async with app_factory(api_token=TOKEN, cors_origins=f"{APP_ORIGIN},http://x.test") as (
            client, _):
        resp = await client.options("/v1/chat/completions", headers={
            "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        allowed = resp.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        assert "Access-Control-Allow-Credentials" not in resp.headers
        assert "Origin" in resp.headers["Vary"]


async def test_a_preflight_from_an_unlisted_origin_is_refused(app_factory: AppFactory):
    async with app_factory(cors_origins=APP_ORIGIN) as (client, _):
        resp = await client.options("/v1/models", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_responses_name_a_listed_origin_and_never_a_wildcard(app_factory: AppFactory):
    async with app_factory(api_token=TOKEN, cors_origins=APP_ORIGIN) as (client, _):
        resp = await client.get("/v1/models", headers={"Origin": APP_ORIGIN, **bearer(TOKEN)})
        assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert "X-Session-Id" in resp.headers["Access-Control-Expose-Headers"]
        resp = await client.get("/v1/models", headers={"Origin": APP_ORIGIN})  # even a 401
        assert resp.status == 401
        assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        resp = await client.get("/v1/models", headers={"Origin": "https://evil.example",
                                                       **bearer(TOKEN)})
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_without_cors_origins_no_cors_headers_at_all(app_factory: AppFactory):
    async with app_factory() as (client, _):
        resp = await client.get("/v1/models", headers={"Origin": APP_ORIGIN})
        assert not any(h.startswith("Access-Control-") for h in resp.headers)
        resp = await client.options("/v1/models", headers={
            "Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET"})
        assert resp.status == 403
