"""Fixtures for provider tests: an HTTP client session and a MOCK OpenAI server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from proxy_router.dev.mock_openai import MockOpenAIOptions, MockOpenAIServer


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def mock_openai() -> AsyncIterator[MockOpenAIServer]:
    """A MOCK OpenAI server on 127.0.0.1, free port, 5 tokens per reply, no delay."""
    server = MockOpenAIServer(MockOpenAIOptions(tokens=5))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
