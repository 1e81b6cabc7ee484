"""MOCK OpenAI-compatible chat server, for unit tests and benchmark baselines only.

It fakes `POST /v1/chat/completions` (stream and not), the legacy `/v1/completions`,
`/v1/embeddings` and `GET /v1/models` with canned tokens and vectors; nothing here
runs a model. Behaviour is set by `MockOpenAIOptions`
and can be changed between requests through `MockOpenAIServer.options`:

- `mode="ok"`: `tokens` tokens (capped by the request's `max_tokens`), each after
  `token_delay` seconds (0 = as fast as possible, the benchmark's no-delay baseline);
- `mode="fail"`: HTTP `fail_status` with an OpenAI-shaped error body;
- `mode="drop"`: the connection is cut after `drop_after` chunks;
- `mode="stall"`: response headers, then never a first token.

Chunk bytes are prebuilt per request so the mock's own CPU stays small in benchmarks.

    python -m proxy_router.dev.mock_openai --port 8080 --token-delay 0.02

`spawn_mock_openai` starts that command as a managed child process, for tests that
kill the backend and benchmarks that measure its CPU apart from their own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import struct
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from proxy_router.process import ManagedProcess, spawn

MockMode = Literal["ok", "fail", "drop", "stall"]
_STALL_SECONDS = 3600.0


@dataclass
class MockOpenAIOptions:
    """How the mock answers; mutable so a test can switch modes on a running mock."""

    tokens: int = 16
    token_delay: float = 0.0
    mode: MockMode = "ok"
    drop_after: int = 3
    fail_status: int = 500
    fail_message: str = "mock backend failure"
    token_text: str = "tok "
    model: str = "mock-model"
    keepalive_comments: bool = False  # interleave `: ping` comment lines, like sse-starlette


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _prompt_tokens(body: dict[str, Any]) -> int:
    words = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            words += len(content.split())
    return max(words, 1)


class MockOpenAIServer:
    """The MOCK server; bind on 127.0.0.1 (free port by default) with `start()`."""

    def __init__(
        self,
        options: MockOpenAIOptions | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.options = options or MockOpenAIOptions()
        self.host = host
        self.port = port
        self.requests_seen = 0
        self.last_request: dict[str, Any] | None = None
        self.last_headers: dict[str, str] = {}
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """OpenAI base URL (`.../v1`), valid after `start()`."""
        return f"http://{self.host}:{self.port}/v1"

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._legacy)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        return app

    async def start(self) -> str:
        runner = web.AppRunner(
            self.make_app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> MockOpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": self.options.model, "object": "model", "owned_by": "mock"}]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' is required")
        self.requests_seen += 1
        self.last_request = body
        self.last_headers = dict(request.headers)
        opts = self.options
        if opts.mode == "fail":
            return _error(opts.fail_status, opts.fail_message)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        n = opts.tokens if not isinstance(max_tokens, int) else min(opts.tokens, max_tokens)
        finish = "length" if n < opts.tokens else "stop"
        model = str(body.get("model") or opts.model)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            usage = bool(isinstance(options, dict) and options.get("include_usage"))
            return await self._stream(request, body, n, finish, model, usage)
        if opts.mode in ("drop", "stall"):
            if opts.mode == "stall":
                await asyncio.sleep(_STALL_SECONDS)
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if opts.token_delay:
            await asyncio.sleep(opts.token_delay * n)
        prompt = _prompt_tokens(body)
        return web.json_response(
            {
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": opts.token_text * n},
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": n,
                    "total_tokens": prompt + n,
                },
            }
        )

    async def _legacy(self, request: web.Request) -> web.StreamResponse:
        """A legacy completion: ``tokens`` times ``token_text`` (``max_tokens`` caps it)."""
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON")
        if not isinstance(body, dict) or "prompt" not in body:
            return _error(400, "'prompt' is required")
        self.requests_seen += 1
        self.last_request = body
        opts = self.options
        if opts.mode == "fail":
            return _error(opts.fail_status, opts.fail_message)
        limit = body.get("max_tokens")
        n = opts.tokens if not isinstance(limit, int) else min(opts.tokens, limit)
        finish = "length" if n < opts.tokens else "stop"
        head = {"id": "cmpl-mock", "object": "text_completion", "created": int(time.time()),
                "model": str(body.get("model") or opts.model)}
        prompt = len(str(body["prompt"])) // 4 + 1
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        if not body.get("stream"):
            return web.json_response({**head, "choices": [{
                "index": 0, "text": opts.token_text * n, "finish_reason": finish,
                "logprobs": None}], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n + 1):
            if opts.token_delay:
                await asyncio.sleep(opts.token_delay)
            choice = {"index": 0, "text": opts.token_text if i < n else "",
                      "finish_reason": None if i < n else finish, "logprobs": None}
            await resp.write(b"data: " + _json({**head, "choices": [choice]}) + b"\n\n")
        options = body.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            await resp.write(b"data: " + _json({**head, "choices": [], "usage": usage})
                             + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        """Embeddings: 8 numbers per input, the same for the same input."""
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON")
        given = body.get("input") if isinstance(body, dict) else None
        if not given:
            return _error(400, "'input' is required")
        self.requests_seen += 1
        self.last_request = body
        if self.options.mode == "fail":
            return _error(self.options.fail_status, self.options.fail_message)
        inputs = given if isinstance(given, list) and not all(
            isinstance(t, int) for t in given) else [given]
        data = []
        for i, item in enumerate(inputs):
            seed = sum(str(item).encode()) or 1
            vector = [((seed * (k + 3)) % 97) / 97 for k in range(8)]
            shown: Any = vector
            if body.get("encoding_format") == "base64":
                shown = base64.b64encode(struct.pack("<8f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": shown})
        used = sum(len(str(item)) // 4 + 1 for item in inputs)
        return web.json_response({"object": "list", "data": data, "model": self.options.model,
                                  "usage": {"prompt_tokens": used, "total_tokens": used}})

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        n: int,
        finish: str,
        model: str,
        include_usage: bool,
    ) -> web.StreamResponse:
        opts = self.options
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        head = {"id": "chatcmpl-mock", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model}  # fmt: skip
        prefix = b"data: " + _json(head)[:-1] + b',"choices":[{"index":0,"delta":'
        first = prefix + _json({"role": "assistant", "content": opts.token_text})
        first += b',"finish_reason":null}]}\n\n'
        token = prefix + _json({"content": opts.token_text}) + b',"finish_reason":null}]}\n\n'
        ping = b": ping\n\n" if opts.keepalive_comments else b""
        if opts.mode == "stall":
            await asyncio.sleep(_STALL_SECONDS)
            return resp
        for i in range(n):
            if opts.token_delay:
                await asyncio.sleep(opts.token_delay)
            if opts.mode == "drop" and i == opts.drop_after:
                assert request.transport is not None
                request.transport.close()
                return resp
            if ping:
                await resp.write(ping)
            await resp.write(first if i == 0 else token)
        tail = prefix + b'{},"finish_reason":' + _json(finish) + b"}]}\n\n"
        if include_usage:
            prompt = _prompt_tokens(body)
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
            tail += b"data: " + _json({**head, "choices": [], "usage": usage}) + b"\n\n"
        await resp.write(tail + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _error(status: int, message: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status)


async def start_mock_openai(
    *, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> tuple[str, Callable[[], Awaitable[None]]]:
    """Start a MOCK server with `MockOpenAIOptions(**options)`; return (base_url, stop)."""
    server = MockOpenAIServer(MockOpenAIOptions(**options), host=host, port=port)
    base_url = await server.start()
    return base_url, server.stop


def spawn_mock_openai(port: int, args: Sequence[str] = (), *, log_path: Path | None = None,
                      timeout: float = 20.0) -> ManagedProcess:
    """Run this module's command line on 127.0.0.1:``port`` (``args``: more of its flags)
    in its own process group; return once ``GET /v1/models`` answers."""
    cmd = [sys.executable, "-m", "proxy_router.dev.mock_openai", "--host", "127.0.0.1",
           "--port", str(port), *args]
    url = f"http://127.0.0.1:{port}/v1/models"
    return spawn(cmd, name=f"mock backend on 127.0.0.1:{port}", log_path=log_path,
                 ready=lambda: _answers(url), timeout=timeout, interval=0.05)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


async def _serve(host: str, port: int, options: MockOpenAIOptions) -> None:
    server = MockOpenAIServer(options, host=host, port=port)
    await server.start()
    print(f"MOCK OpenAI server listening on {server.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MOCK OpenAI-compatible chat server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    defaults = MockOpenAIOptions()
    parser.add_argument("--tokens", type=int, default=defaults.tokens)
    parser.add_argument("--token-delay", type=float, default=defaults.token_delay,
                        help="seconds between tokens (0 = no delay)")  # fmt: skip
    parser.add_argument("--mode", choices=["ok", "fail", "drop", "stall"], default=defaults.mode)
    parser.add_argument("--drop-after", type=int, default=defaults.drop_after)
    parser.add_argument("--model", default=defaults.model)
    args = parser.parse_args(argv)
    names = {f.name for f in fields(MockOpenAIOptions)}
    options = MockOpenAIOptions(**{k: v for k, v in vars(args).items() if k in names})
    asyncio.run(_serve(args.host, args.port, options))


if __name__ == "__main__":
    main()
