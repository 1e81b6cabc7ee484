"""Fake model servers for provider tests, written once: each test file says only how its
own server answers.

A ``RecordingBackend`` serves OpenAI's routes on a free 127.0.0.1 port and records every
chat request it serves, how many it serves at once and how each ended, so that a test
waits on what the server saw rather than on time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

import pytest
from aiohttp import web

ENDED = 10.0
"""Seconds a test waits for something to happen before it fails (a hang guard, not a
measurement: every wait ends on an event)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[Handler], Awaitable[str]]
"""The ``serve`` fixture: serves a chat-completions handler, returns its base URL."""


@dataclass
class RecordingBackend:
    """An OpenAI-style server whose chat requests ``answer`` (by default ``handler``).

    ``requests`` holds each request's body; ``ended`` how each ended: ``done``, ``failed``
    (an HTTP error) or ``gone`` (its client went first: handlers are cancelled then)."""

    handler: Handler | None = None
    requests: list[dict[str, Any]] = field(default_factory=list, init=False)
    ended: list[str] = field(default_factory=list, init=False)
    serving: int = field(default=0, init=False)
    peak: int = field(default=0, init=False)
    url: str = field(default="", init=False)
    _change: asyncio.Condition = field(default_factory=asyncio.Condition, init=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    def routes(self, router: web.UrlDispatcher) -> None:
        """Any routes a backend serves besides chat completions and the model list."""

    async def answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        assert self.handler is not None, "give a handler, or say the answer in a subclass"
        return await self.handler(request)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self.routes(app.router)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        return self._runner

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def wait(self, what: str, check: Callable[[], bool]) -> None:
        """Until ``check()`` holds; it is checked again after each request's start or end."""
        try:
            async with asyncio.timeout(ENDED), self._change:
                await self._change.wait_for(check)
        except TimeoutError:
            raise AssertionError(f"not so: {what} (ended: {self.ended})") from None

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        async with self._change:
            self.requests.append(body)
            self.serving += 1
            self.peak = max(self.peak, self.serving)
            self._change.notify_all()
        how = "gone"
        try:
            resp = await self.answer(request, body)
            how = "failed" if resp.status >= 400 else "done"
            return resp
        finally:
            await asyncio.shield(self._end(how))

    async def _end(self, how: str) -> None:
        async with self._change:
            self.serving -= 1
            self.ended.append(how)
            self._change.notify_all()


B = TypeVar("B", bound=RecordingBackend)


def fixture_of(cls: type[B]) -> Any:
    """A fixture giving each test a started ``cls()``, closed after it however it ends."""
    @pytest.fixture
    async def started() -> AsyncIterator[B]:
        async with cls() as backend:
            yield backend
    return started


def sse(rid: str, choice: dict[str, Any] | None, *, spaced: bool = False,
        **extra: Any) -> bytes:
    """One ``chat.completion.chunk`` event: compact JSON as OpenAI writes it, or ``spaced``
    as llama-cpp-python does (the meter reads both)."""
    chunk = {"id": rid, "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [choice] if choice else [], **extra}
    text = json.dumps(chunk) if spaced else json.dumps(chunk, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"
