"""An OpenAI ``/v1/embeddings`` server for a GGUF model, on llama.cpp (llama-cpp-python).

Why not ``llama_cpp.server --embedding``: its settings cannot choose a pooling type, so
a chat model such as SmolLM2 (no pooling in its metadata) yields one vector per token,
or fails outright on a batch of several inputs (``llama_decode returned -1``). This
server loads the model in embedding mode with mean pooling, embeds the inputs one at
a time (in a worker thread: the loop keeps answering), and returns unit-length vectors
as OpenAI does, in OpenAI's shapes and error format.

    python -m proxy_router.provider.embedding_server --model m.gguf --port 8081

``EmbeddedLlamaServer`` runs it for a ``gguf`` model whose ``modelType`` is
``embedding``; the devnet runs it for its embedding model.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import signal
import struct
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy_router import bounded_json

if TYPE_CHECKING:
    from llama_cpp import Llama

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_INPUTS = 2048
"""OpenAI's own limit of inputs per request."""
Inputs = list[str] | list[list[int]]


class EmbeddingRefused(Exception):
    """A request this server will not embed: a 400 with OpenAI's code and param."""

    def __init__(self, message: str, *, code: str = "invalid_request_error",
                 param: str | None = "input") -> None:
        super().__init__(message)
        self.code = code
        self.param = param


def parse_inputs(value: Any) -> Inputs:
    """OpenAI's ``input``: a string, strings, a token array or token arrays; never empty."""
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(isinstance(t, int) for t in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise EmbeddingRefused("input must be a non-empty string, array of strings or "
                               "array of token arrays")
    if len(value) > MAX_INPUTS:
        raise EmbeddingRefused(f"at most {MAX_INPUTS} inputs per request")
    if all(isinstance(v, str) and v for v in value):
        return value
    if all(isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool)
                                             and t >= 0 for t in v) for v in value):
        return value
    raise EmbeddingRefused("input items must all be non-empty strings or all be non-empty "
                           "token arrays")


def unit(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to length 1 (OpenAI's embeddings are normalised)."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)


def as_base64(vector: Sequence[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


class EmbeddingModel:
    """The model in embedding mode; calls run one at a time (llama.cpp's context is not
    thread-safe), in a worker thread."""

    def __init__(self, llama: Llama, alias: str) -> None:
        self.llama = llama
        self.alias = alias
        self.n_ctx = llama.n_ctx()
        self._lock = asyncio.Lock()

    def _tokens(self, item: str | list[int]) -> list[int]:
        return item if isinstance(item, list) else self.llama.tokenize(item.encode())

    def _embed_all(self, inputs: Inputs) -> tuple[list[list[float]], int]:
        vectors: list[list[float]] = []
        used = 0
        items: list[str | list[int]] = list(inputs)
        for i, item in enumerate(items):
            tokens = self._tokens(item)
            if len(tokens) > self.n_ctx:
                raise EmbeddingRefused(
                    f"input[{i}] has {len(tokens)} tokens; this model's context is "
                    f"{self.n_ctx} tokens", code="context_length_exceeded")
            vectors.append(unit(self._embed_one(tokens)))
            used += len(tokens)
        return vectors, used

    def _embed_one(self, tokens: list[int]) -> list[float]:
        """One sequence alone in one batch (``n_batch`` is the context, so it fits):
        llama-cpp-python's own ``embed`` packs several sequences in a batch, which a
        context of one sequence refuses."""
        import llama_cpp

        llama, ctx = self.llama, self.llama._ctx.ctx
        llama._batch.reset()
        llama._batch.add_sequence(tokens, 0, False)
        llama_cpp.llama_kv_self_clear(ctx)
        llama._ctx.decode(llama._batch)
        vector = llama_cpp.llama_get_embeddings_seq(ctx, 0)[: llama.n_embd()]
        llama._batch.reset()
        llama_cpp.llama_kv_self_clear(ctx)
        return vector

    async def embed(self, inputs: Inputs) -> tuple[list[list[float]], int]:
        async with self._lock:
            return await asyncio.to_thread(self._embed_all, inputs)


def _error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                        "param": param, "code": code}}, status=status)


def make_app(model: EmbeddingModel) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": model.alias, "object": "model", "created": 0, "owned_by": "me"}]})

    async def embeddings(request: web.Request) -> web.Response:
        try:
            body = bounded_json.loads(await request.read(), max_bytes=MAX_BODY_BYTES)
        except ValueError:
            return _error(400, "the body is not valid JSON", "invalid_json", None)
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", "invalid_json", None)
        fmt = body.get("encoding_format", "float")
        try:
            if fmt not in ("float", "base64"):
                raise EmbeddingRefused('encoding_format must be "float" or "base64"',
                                       param="encoding_format")
            if body.get("dimensions") is not None and body["dimensions"] != model.llama.n_embd():
                raise EmbeddingRefused(f"this model's embeddings have {model.llama.n_embd()} "
                                       "dimensions; it cannot shorten them",
                                       param="dimensions")
            vectors, used = await model.embed(parse_inputs(body.get("input")))
        except EmbeddingRefused as exc:
            return _error(400, str(exc), exc.code, exc.param)
        data = [{"object": "embedding", "index": i,
                 "embedding": as_base64(v) if fmt == "base64" else v}
                for i, v in enumerate(vectors)]
        return web.json_response({"object": "list", "data": data, "model": model.alias,
                                  "usage": {"prompt_tokens": used, "total_tokens": used}})

    async def count(request: web.Request) -> web.Response:
        """llama-cpp-python's tokenizer route, so the provider's meter finds it too."""
        body = bounded_json.loads(await request.read(), max_bytes=MAX_BODY_BYTES)
        text = body.get("input") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return _error(400, "input must be a string", "invalid_value", "input")
        return web.json_response({"count": len(model.llama.tokenize(text.encode()))})

    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/extras/tokenize/count", count)
    return app


def load(path: str, *, alias: str, n_ctx: int, n_threads: int | None) -> EmbeddingModel:
    import llama_cpp  # the provider extra; imported here so the module stays light

    llama = llama_cpp.Llama(path, embedding=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                            n_threads=n_threads,
                            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, verbose=False)
    return EmbeddingModel(llama, alias)


async def _serve(model: EmbeddingModel, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(model), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"embedding server for {model.alias} on http://{host}:{port}/v1 "
          f"({time.strftime('%H:%M:%S')})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI /v1/embeddings on llama.cpp")
    parser.add_argument("--model", required=True, help="the GGUF file")
    parser.add_argument("--model_alias", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--n_ctx", type=int, default=2048)
    parser.add_argument("--n_threads", type=int, default=None)
    args = parser.parse_args(argv)
    alias = args.model_alias or args.model.rsplit("/", 1)[-1].removesuffix(".gguf")
    model = load(args.model, alias=alias, n_ctx=args.n_ctx, n_threads=args.n_threads)
    asyncio.run(_serve(model, args.host, args.port))


if __name__ == "__main__":
    main()
