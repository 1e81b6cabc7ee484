"""Headless Chromium for the web app tests, driven by Playwright.

Playwright cannot download its own browser here, so it drives the system
Chromium (Debian packages ``chromium`` and ``chromium-driver``). Screenshots go
to ``test-artifacts/browser/`` at the repository root (git-ignored).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


def skip_without_chromium() -> None:
    """Skip the calling test module when the system Chromium is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install the Debian packages `chromium` and "
                    "`chromium-driver` to run the browser tests", allow_module_level=True)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """A fresh screenshot folder per run."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()
