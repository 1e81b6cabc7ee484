"""Fixtures for provider tests: an HTTP client session, a MOCK OpenAI server, and
servers for handlers a test writes itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import aiohttp
import pytest

from proxy_router.dev.mock_openai import MockOpenAIOptions, MockOpenAIServer
from tests.provider.fakes import Handler, RecordingBackend, Serve


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


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serves chat-completions handlers, each on its own free port (handler -> base URL),
    for answers no well-behaved mock gives; all are closed when the test ends."""
    async with AsyncExitStack() as stack:
        async def start(handler: Handler) -> str:
            return (await stack.enter_async_context(RecordingBackend(handler))).url

        yield start
