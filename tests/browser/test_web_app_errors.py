"""The web app in a real browser against a scripted API (no chain, no model): exact
BigInt amounts, the SSE parser, and how errors reach the user — a 401, a refused
session, an error in the middle of a streamed answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from playwright.async_api import Browser, Page, Request, Route, expect

from proxy_router.consumer.api import WEB_DIR
from tests.browser.conftest import skip_without_chromium

skip_without_chromium()

ORIGIN = "http://consumer.test"
MODEL_ID = "0x" + "ab" * 32
BID_ID = "0x" + "cd" * 32
SESSION_ID = "0x" + "ef" * 32
PROVIDER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
PRICE = 10**14
BIG_MOR = "123456789012345678901234567"  # 123,456,789.012345678901234567 MOR: beyond a float

Reply = tuple[int, Any]  # (status, JSON body) or (status, "raw SSE text")


def market() -> dict[str, Callable[[Request], Reply]]:
    model = {"id": MODEL_ID, "name": "tiny-model", "tags": ["llm"], "isDeleted": False,
             "owner": PROVIDER, "stake": "100", "createdAt": 1}
    bid = {"id": BID_ID, "provider": PROVIDER, "modelId": MODEL_ID, "pricePerSecond": str(PRICE),
           "nonce": 0, "createdAt": 1, "deletedAt": 0, "score": 0.75, "successRate": 0.5,
           "meanTps": 0.0, "meanTtftMs": 0.0}
    session = {"id": SESSION_ID, "user": PROVIDER, "provider": PROVIDER, "bidId": BID_ID,
               "modelId": MODEL_ID, "stake": str(600 * PRICE), "pricePerSecond": str(PRICE),
               "openedAt": 1000, "endsAt": 1600, "closedAt": 0, "providerEarned": "0",
               "userRefund": "0", "held": "0", "disputed": False, "closed": False,
               "secondsLeft": 600, "costSoFar": "0"}
    return {
        "GET /blockchain/balance": lambda _: (200, {"address": PROVIDER, "eth": str(10**18),
                                                    "mor": BIG_MOR}),
        "GET /v1/models": lambda _: (200, {"object": "list", "data": [
            {"id": "tiny-model", "modelId": MODEL_ID, "activeBids": 1}]}),
        "GET /blockchain/models": lambda _: (200, [model]),
        "GET /blockchain/providers": lambda _: (200, [
            {"id": PROVIDER, "endpoint": "127.0.0.1:3333", "stake": "200", "activeBids": 1,
             "sessionCount": 0, "isDeleted": False}]),
        f"GET /blockchain/models/{MODEL_ID}/bids/rated": lambda _: (200, [bid]),
        "GET /blockchain/sessions": lambda _: (200, []),
        f"GET /blockchain/sessions/{SESSION_ID}": lambda _: (200, session),
        f"POST /blockchain/bids/{BID_ID}/session": lambda _: (201, {
            "sessionId": SESSION_ID, "modelId": MODEL_ID, "bidId": BID_ID, "provider": PROVIDER,
            "stake": str(600 * PRICE), "openedAt": 1000, "endsAt": 1600, "status": "open"}),
    }


class FakeConsumer:
    """Serves the real static files and scripted API replies at ORIGIN."""

    def __init__(self) -> None:
        self.routes = market()
        self.requests: list[Request] = []

    async def handle(self, route: Route) -> None:
        request = route.request
        path = urlparse(request.url).path
        if path == "/" or path.startswith("/static/"):
            file = WEB_DIR / ("index.html" if path == "/" else path.removeprefix("/static/"))
            kind = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
            await route.fulfill(status=200, body=file.read_bytes(),
                                content_type=kind.get(file.suffix, "application/octet-stream"))
            return
        self.requests.append(request)
        reply = self.routes.get(f"{request.method} {path}")
        status, body = reply(request) if reply else (404, {"error": {
            "message": f"no route {path}", "code": "not_found"}})
        if isinstance(body, str):
            await route.fulfill(status=status, body=body, content_type="text/event-stream")
        else:
            await route.fulfill(status=status, body=json.dumps(body),
                                content_type="application/json")


@pytest.fixture
async def fake(browser: Browser) -> AsyncIterator[tuple[Page, FakeConsumer]]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    consumer = FakeConsumer()
    await context.route(f"{ORIGIN}/**", consumer.handle)
    page = await context.new_page()
    try:
        yield page, consumer
    finally:
        await context.close()


async def test_amounts_are_exact_bigint_and_sse_frames_are_parsed(fake):
    page, _ = fake
    await page.goto(ORIGIN + "/")
    await expect(page.get_by_test_id("wallet-mor")).to_have_text("123,456,789.012345 MOR")
    result = await page.evaluate("""async () => {
      const f = await import("/static/format.js");
      const parser = new f.SseParser();
      const events = [...parser.push('data: {"a":1}\\r\\n\\r\\ndata: [DO'),
                      ...parser.push('NE]\\n\\n')];
      return {
        full: f.formatUnits("123456789012345678901234567"),
        cut: f.formatUnits("1999999999999999999", {maxFraction: 4}),
        tiny: f.formatUnits("1", {maxFraction: 6}),
        zero: f.formatUnits("0"),
        cost: f.costAfter(7, "100000000000000", "600000000000000").toString(),
        capped: f.costAfter(9, "100000000000000", "600000000000000").toString(),
        clock: [f.formatDuration(600), f.formatDuration(3725), f.formatDuration(90061)],
        events,
      };
    }""")
    assert result == {
        "full": "123,456,789.012345678901234567", "cut": "1.9999", "tiny": "<0.000001",
        "zero": "0", "cost": "600000000000000", "capped": "600000000000000",
        "clock": ["10:00", "1:02:05", "1d 01:01:01"], "events": ['{"a":1}', "[DONE]"],
    }


async def test_a_401_says_how_to_get_access_and_a_token_is_then_sent(fake):
    page, consumer = fake
    routes = consumer.routes
    allowed = routes["GET /blockchain/balance"]

    def balance(request: Request) -> Reply:
        if request.headers.get("authorization") != "Bearer s3cret":
            return 401, {"error": {"message": "missing or invalid token", "code": "unauthorized"}}
        return allowed(request)

    routes["GET /blockchain/balance"] = balance
    await page.goto(ORIGIN + "/")
    await expect(page.get_by_test_id("error")).to_contain_text("not authorized")
    await expect(page.get_by_test_id("error")).to_contain_text("API token")
    await page.get_by_label("API token for this consumer").fill("s3cret")
    await page.get_by_role("button", name="Use token").click()
    await expect(page.get_by_test_id("wallet-mor")).to_contain_text("123,456,789")
    await expect(page.get_by_test_id("error")).to_be_hidden()
    assert consumer.requests[-1].headers.get("authorization") == "Bearer s3cret"


async def test_a_refused_session_shows_the_api_error(fake):
    page, consumer = fake
    consumer.routes[f"POST /blockchain/bids/{BID_ID}/session"] = lambda _: (402, {"error": {
        "message": "a 600s session needs 60000000000000000 MOR wei; the wallet holds 5",
        "code": "insufficient_mor", "type": "insufficient_funds"}})
    await page.goto(ORIGIN + "/")
    await page.get_by_test_id("open-bid-session").click()
    error = page.get_by_test_id("error")
    await expect(error).to_contain_text("Opening the session failed")
    await expect(error).to_contain_text("the wallet holds 5")
    await expect(error).to_contain_text("insufficient_mor")
    await expect(page.get_by_test_id("session-empty")).to_be_visible()
    await expect(page.get_by_test_id("prompt")).to_be_disabled()


async def test_an_error_in_the_middle_of_a_stream_keeps_the_text_and_says_why(fake, artifacts):
    page, consumer = fake
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}}]}

    def frame(delta: dict[str, str]) -> str:
        return "data: " + json.dumps({**chunk, "choices": [{"index": 0, "delta": delta}]}) + "\n\n"

    error = {"error": {"message": "provider connection lost", "code": "provider_unavailable"}}
    sse = (frame({"role": "assistant"}) + frame({"content": "Hel"}) + frame({"content": "lo"})
           + "data: " + json.dumps(error) + "\n\ndata: [DONE]\n\n")
    seen: list[dict[str, Any]] = []

    def chat(request: Request) -> Reply:
        seen.append({"headers": request.headers, "body": request.post_data_json})
        return 200, sse

    consumer.routes["POST /v1/chat/completions"] = chat
    await page.goto(ORIGIN + "/")
    await page.get_by_test_id("open-bid-session").click()
    await expect(page.get_by_test_id("session-status")).to_have_text("open")
    await page.get_by_test_id("prompt").fill("Hi")
    await page.get_by_test_id("send").click()
    answer = page.get_by_test_id("assistant-message").last
    await expect(answer).to_have_attribute("data-state", "error")
    await expect(answer.locator(".content")).to_have_text("Hello")
    await expect(answer).to_contain_text("provider connection lost")
    await expect(page.get_by_test_id("error")).to_contain_text("provider_unavailable")
    await expect(page.get_by_test_id("send")).to_be_enabled()
    assert seen[0]["headers"]["session_id"] == SESSION_ID
    assert seen[0]["body"]["model"] == MODEL_ID and seen[0]["body"]["stream"] is True
    await page.screenshot(path=Path(artifacts) / "90-stream-error.png", full_page=True)


async def test_a_refused_prompt_is_explained_and_kept_for_another_try(fake):
    page, consumer = fake
    consumer.routes["POST /v1/chat/completions"] = lambda _: (429, {"error": {
        "message": "no free slot for this model", "code": "no_capacity"}})
    await page.goto(ORIGIN + "/")
    await page.get_by_test_id("open-bid-session").click()
    await expect(page.get_by_test_id("session-status")).to_have_text("open")
    await page.get_by_test_id("prompt").fill("Hi")
    await page.get_by_test_id("prompt").press("Enter")
    await expect(page.get_by_test_id("assistant-message").last).to_have_attribute(
        "data-state", "error")
    await expect(page.get_by_test_id("error")).to_contain_text(
        "no free slot for this model [no_capacity, HTTP 429]")
    await expect(page.get_by_test_id("prompt")).to_have_value("Hi")


async def test_a_stream_cut_before_done_is_an_error_not_a_complete_answer(fake):
    page, consumer = fake
    frame = {"object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": {"content": "Half an ans"}}]}
    consumer.routes["POST /v1/chat/completions"] = lambda _: (
        200, "data: " + json.dumps(frame) + "\n\n")
    await page.goto(ORIGIN + "/")
    await page.get_by_test_id("open-bid-session").click()
    await expect(page.get_by_test_id("session-status")).to_have_text("open")
    await page.get_by_test_id("prompt").fill("Hi")
    await page.get_by_test_id("send").click()
    answer = page.get_by_test_id("assistant-message").last
    await expect(answer).to_have_attribute("data-state", "error")
    await expect(answer.locator(".content")).to_have_text("Half an ans")
    await expect(page.get_by_test_id("error")).to_contain_text("stopped before it was complete")
