"""An embedded llama.cpp server (llama-cpp-python) for models configured with a `gguf` path.

The model runs in a child process — `python -m llama_cpp.server` — rather than in
the router's process: inference holds the GIL and CPU for long stretches, and a
crash in native code must not take the router down. It is spawned and stopped by
``proxy_router.process`` (its own process group, so stopping it also stops anything
it spawned), and its output goes to a log file whose tail is quoted when it fails
to start.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from proxy_router.ports import free_port
from proxy_router.process import (
    LOG_TAIL_BYTES,
    ManagedProcess,
    StartupError,
    log_tail,
    spawn,
    wait_until_async,
)

if TYPE_CHECKING:
    from proxy_router.provider.models_config import ModelConfig

_POLL_INTERVAL_S = 0.25
_live: set[EmbeddedLlamaServer] = set()


class LlamaServerError(RuntimeError):
    """The embedded server did not come up; the message ends with its log tail."""


def _flag_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class EmbeddedLlamaServer:
    """Runs `llama_cpp.server` for one GGUF on `host:port`; `base_url` is its OpenAI base.

    Use as `async with EmbeddedLlamaServer(path) as srv:` or call `start()`/`stop()`.
    """

    def __init__(
        self,
        gguf_path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        model_alias: str | None = None,
        extra_args: Mapping[str, str | int | float | bool] | None = None,
        log_path: str | Path | None = None,
        startup_timeout: float = 120.0,
        embedding: bool = False,
    ) -> None:
        """``embedding``: serve ``/v1/embeddings`` (``embedding_server``) instead of chat."""
        self.gguf_path = Path(gguf_path)
        self.host = host
        self.port = port if port is not None else free_port()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.model_alias = model_alias or self.gguf_path.stem
        self.extra_args = dict(extra_args or {})
        self.startup_timeout = startup_timeout
        self.embedding = embedding
        self.log_path = Path(log_path) if log_path else self._default_log_path()
        self._proc: ManagedProcess | None = None

    @classmethod
    def from_config(cls, model: ModelConfig, **kwargs: object) -> EmbeddedLlamaServer:
        """Build from a `gguf` entry of models-config.json (alias = its modelName)."""
        if model.gguf is None:
            raise ValueError(f"model {model.model_id} has no gguf path")
        args = model.llama_args
        return cls(
            model.gguf,
            model_alias=model.model_name,
            n_ctx=args.n_ctx if args else 2048,
            n_threads=args.n_threads if args else None,
            extra_args=args.extra_args() if args else None,
            embedding=model.model_type == "embedding",
            **kwargs,  # type: ignore[arg-type]
        )

    def _default_log_path(self) -> Path:
        name = f"llama-server-{self.model_alias}-{self.port}.log"
        return Path(tempfile.gettempdir()) / name.replace(os.sep, "_")

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. `http://127.0.0.1:8080/v1`."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def command(self) -> list[str]:
        """The child's argv. `interrupt_requests` is off: by default llama_cpp.server
        cuts a running stream as soon as another request waits, which would break
        concurrent prompts from several sessions. An embedding model runs our
        ``embedding_server`` (llama_cpp.server cannot pool a chat model's vectors)."""
        if self.embedding:
            cmd = [sys.executable, "-m", "proxy_router.provider.embedding_server",
                   "--model", str(self.gguf_path), "--model_alias", self.model_alias,
                   "--host", self.host, "--port", str(self.port), "--n_ctx", str(self.n_ctx)]
            if self.n_threads is not None:
                cmd += ["--n_threads", str(self.n_threads)]
            return cmd
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.gguf_path),
            "--model_alias", self.model_alias,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--interrupt_requests", "false",
        ]  # fmt: skip
        if self.n_threads is not None:
            cmd += ["--n_threads", str(self.n_threads)]
        for key, value in self.extra_args.items():
            cmd += [f"--{key}", _flag_value(value)]
        return cmd

    def log_tail(self, max_bytes: int = LOG_TAIL_BYTES) -> str:
        """Last part of the server's log, for error messages."""
        return log_tail(self.log_path, max_bytes)

    async def start(self) -> str:
        """Launch the server and wait until `GET /v1/models` answers; return base_url."""
        if self.running:
            return self.base_url
        if not self.gguf_path.is_file():
            raise LlamaServerError(f"GGUF file not found: {self.gguf_path}")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Spawning is a fork+exec, quick enough to do on the loop; the wait is async.
        self._proc = spawn(self.command(), name="llama_cpp.server", env=env,
                           log_path=self.log_path, append=False)
        _live.add(self)
        try:
            await self._wait_ready(self._proc)
        except StartupError as exc:
            await self.stop()
            raise LlamaServerError(str(exc)) from exc
        except BaseException:
            await self.stop()
            raise
        return self.base_url

    async def _wait_ready(self, proc: ManagedProcess) -> None:
        url = self.base_url + "/models"
        probe_timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=probe_timeout) as http:

            async def answers() -> bool:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(url) as resp:
                        return resp.status == 200
                return False

            await wait_until_async(answers, self.startup_timeout, f"llama_cpp.server on {url}",
                                   process=proc, interval=_POLL_INTERVAL_S)

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds."""
        proc, self._proc = self._proc, None
        _live.discard(self)
        if proc is not None:
            await proc.stop_async(grace)

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit): SIGKILL the group."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGKILL)

    async def __aenter__(self) -> EmbeddedLlamaServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@atexit.register
def _kill_leftovers() -> None:
    """Never leave a model server running after the router exits without stop()."""
    for server in list(_live):
        server.kill_now()
