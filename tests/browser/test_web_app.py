"""The web app in a real browser against the real devnet (anvil, contracts,
llama.cpp with SmolLM2-135M, provider and consumer): see the market and the
wallet, open a session on the bid, chat with streamed output, close the session
and see the refund. A screenshot of every step lands in test-artifacts/browser/."""

from __future__ import annotations

import contextlib
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout

from proxy_router.dev.devnet import DevnetState
from tests.browser.conftest import skip_without_chromium

skip_without_chromium()
pytestmark = pytest.mark.integration

DURATION_MINUTES = 10
PROMPT = "Say hello"

# Every text change of the newest answer, recorded in the page as it streams.
WATCH_ANSWER = """() => {
  window.__answerTexts = [];
  new MutationObserver(() => {
    const all = document.querySelectorAll('[data-testid="assistant-message"] .content');
    const text = all.length ? all[all.length - 1].textContent : "";
    const seen = window.__answerTexts;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  }).observe(document.getElementById("chat-log"),
             {subtree: true, childList: true, characterData: true});
}"""


async def get_json(base: str, path: str) -> object:
    async with aiohttp.ClientSession() as http, http.get(base + path) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def close_if_open(page: Page, base: str, session_id: str) -> None:
    """Settle a session the test left open (it holds one of the provider's slots),
    with the page's own cookie in case the API asks for it."""
    cookies = {c["name"]: c["value"] for c in await page.context.cookies(base)}
    async with aiohttp.ClientSession(cookies=cookies) as http:
        async with http.get(f"{base}/blockchain/sessions/{session_id}") as resp:
            if resp.status != 200 or (await resp.json())["closed"]:
                return
        async with http.post(f"{base}/blockchain/sessions/{session_id}/close") as resp:
            assert resp.status in (200, 409), await resp.text()


async def wei(page: Page, testid: str) -> int:
    value = await page.get_by_test_id(testid).get_attribute("data-wei")
    assert value is not None, f"{testid} shows no amount"
    return int(value)


async def test_browse_open_a_session_chat_close_it_and_see_the_refund(
        devnet: DevnetState, browser: Browser, artifacts: Path):
    base = devnet.consumer_base
    wallet = await get_json(base, "/blockchain/balance")
    rated = await get_json(base, f"/blockchain/models/{devnet.model_id}/bids/rated")
    bid = next(b for b in rated if b["id"].lower() == devnet.bid_id.lower())
    price = int(bid["pricePerSecond"])
    sessions_before = {s["sessionId"].lower()
                       for s in await get_json(base, "/blockchain/sessions")}

    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page_errors: list[str] = []
    session_id = None
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    try:
        # 1. The market: wallet balances, the model, its bid with the rating.
        await page.goto(base + "/")
        await expect(page).to_have_title("proxy-router · consumer")
        await expect(page.get_by_test_id("wallet-mor")).to_have_attribute(
            "data-wei", wallet["mor"])
        await expect(page.get_by_test_id("wallet-eth")).to_have_attribute(
            "data-wei", wallet["eth"])
        await expect(page.get_by_test_id("wallet-address")).to_have_attribute(
            "title", wallet["address"])
        model_row = page.locator(f'[data-testid="model-row"][data-model-id="{devnet.model_id}"]')
        await expect(model_row).to_contain_text(devnet.model_name)
        bid_row = page.locator(f'[data-testid="bid-row"][data-bid-id="{devnet.bid_id.lower()}"]')
        await expect(bid_row).to_be_visible()
        await expect(bid_row.get_by_test_id("bid-score")).to_have_text(f"{bid['score']:.3f}")
        await expect(bid_row.get_by_test_id("bid-success")).to_have_text(
            f"{bid['successRate'] * 100:.1f}%")
        await expect(bid_row.get_by_test_id("bid-price").locator("[data-wei]")).to_have_attribute(
            "data-wei", str(price))
        await expect(page.get_by_test_id("providers-table")).to_contain_text(
            devnet.provider_endpoint)
        await page.screenshot(path=artifacts / "01-market.png", full_page=True)

        # 2. Open a 10-minute session on that bid.
        await page.get_by_test_id("session-duration").fill(str(DURATION_MINUTES))
        await bid_row.get_by_test_id("open-bid-session").click()
        # The panel may already show an open session of this wallet: wait for the new one.
        await page.wait_for_function(
            "before => { const id = document.querySelector('[data-testid=session-id]')"
            "?.dataset.sessionId; return Boolean(id) && !before.includes(id); }",
            arg=sorted(sessions_before), timeout=30_000)
        status = page.get_by_test_id("session-status")
        await expect(status).to_have_text("open")
        session_id = await page.get_by_test_id("session-id").get_attribute("data-session-id")
        assert session_id
        onchain = await get_json(base, f"/blockchain/sessions/{session_id}")
        assert onchain["bidId"].lower() == devnet.bid_id.lower()
        stake = price * DURATION_MINUTES * 60
        assert await wei(page, "session-stake") == stake == int(onchain["stake"])
        await expect(page.get_by_test_id("prompt")).to_be_focused()
        await expect(page.get_by_test_id("error")).to_be_hidden()

        # 3. Time left counts down locally, cost so far grows with it.
        time_left = page.get_by_test_id("session-time-left")
        first_left = int(await time_left.get_attribute("data-seconds") or 0)
        assert 0 < first_left <= DURATION_MINUTES * 60
        await page.wait_for_function(
            "s => Number(document.querySelector('[data-testid=session-time-left]')"
            ".dataset.seconds) <= s - 2", arg=first_left, timeout=10_000)
        cost = await wei(page, "session-cost")
        assert cost > 0 and cost % price == 0
        await page.screenshot(path=artifacts / "02-session-open.png", full_page=True)

        # 4. Chat: the real model's answer streams into the page.
        await page.evaluate(WATCH_ANSWER)
        await page.get_by_test_id("prompt").fill(PROMPT)
        await page.get_by_test_id("prompt").press("Enter")
        answer = page.get_by_test_id("assistant-message").last
        await expect(page.get_by_test_id("user-message").last.locator(".content")).to_have_text(
            PROMPT)
        # A mid-stream screenshot when the model is slow enough to catch it.
        with contextlib.suppress(PlaywrightTimeout):
            await page.wait_for_function(
                "() => { const m = [...document.querySelectorAll("
                "'[data-testid=assistant-message]')].pop();"
                " return m && m.dataset.state === 'streaming' && Number(m.dataset.chunks) >= 3; }",
                timeout=5_000)
            await page.screenshot(path=artifacts / "03-streaming.png", full_page=True)
        await expect(answer).to_have_attribute("data-state", "done", timeout=120_000)
        text = (await answer.locator(".content").text_content() or "").strip()
        assert text, "the model's answer is empty"
        updates = await page.evaluate("window.__answerTexts")
        assert len(updates) > 1, f"the answer arrived in one piece, not streamed: {updates}"
        assert updates[-1].strip() == text
        assert int(await answer.get_attribute("data-chunks") or 0) > 1
        await expect(answer.locator(".meta")).to_contain_text("tokens")
        await expect(page.get_by_test_id("error")).to_be_hidden()
        await page.screenshot(path=artifacts / "04-answer.png", full_page=True)

        # 5. Close: the provider is paid for the time used, the rest is refunded.
        await page.get_by_test_id("close-session").click()
        settlement = page.get_by_test_id("settlement")
        await expect(settlement).to_be_visible(timeout=30_000)
        await expect(status).to_have_text("closed")
        paid = await wei(page, "settlement-provider")
        refund = await wei(page, "settlement-refund")
        held = await wei(page, "settlement-held")
        assert await wei(page, "settlement-stake") == stake
        assert refund > 0 and paid > 0 and held == 0
        assert paid + refund == stake
        await expect(page.get_by_test_id("settlement-check")).to_contain_text(
            "every wei is accounted for")
        await expect(page.get_by_test_id("settlement-receipt")).to_have_text(
            "signed by the provider")
        await expect(settlement.get_by_role("heading", name="Settlement")).to_be_focused()
        settled = await get_json(base, f"/blockchain/sessions/{session_id}")
        assert settled["closed"]
        assert (int(settled["providerEarned"]), int(settled["userRefund"])) == (paid, refund)
        await expect(page.get_by_test_id("prompt")).to_be_disabled()
        session_row = page.locator(f'[data-testid="session-row"][data-session-id="{session_id}"]')
        await expect(session_row).to_contain_text("closed", timeout=10_000)
        await page.screenshot(path=artifacts / "05-settlement.png", full_page=True)
        assert not page_errors, page_errors
    finally:
        if session_id:
            await close_if_open(page, base, session_id)
        await context.close()
