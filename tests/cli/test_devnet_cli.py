"""`scripts/devnet.py up --backend-url URL --slots N --model-name NAME`: the devnet in
front of an OpenAI-compatible server that already runs (here the MOCK server), and the
checks of that URL before anything is started."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy_router.dev.devnet import (
    MODEL_NAME,
    BackendError,
    DevnetState,
    backend_base_url,
    choose_backend,
    probe_backend,
)
from proxy_router.dev.mock_openai import MockOpenAIServer, spawn_mock_openai
from proxy_router.ports import free_port
from proxy_router.process import ManagedProcess, is_alive, stop_process_group

REPO = Path(__file__).resolve().parents[2]
DEVNET = REPO / "scripts" / "devnet.py"


def devnet(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEVNET), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


# -- the URL and the server behind it (no chain) ----------------------------------------------


@pytest.mark.parametrize(("given", "base"), [
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("  http://127.0.0.1:8000/v1/  ", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1/chat/completions", "http://127.0.0.1:8000/v1"),
    ("https://gpu.example:443/openai/v1/models", "https://gpu.example:443/openai/v1"),
    ("http://localhost:8080", "http://localhost:8080"),
])
def test_a_backend_url_is_cut_back_to_its_openai_base(given: str, base: str):
    assert backend_base_url(given) == base


@pytest.mark.parametrize(("given", "says"), [
    ("127.0.0.1:8000/v1", "not an http(s) URL"),
    ("ftp://127.0.0.1/v1", "not an http(s) URL"),
    ("http:///v1", "not an http(s) URL"),
    ("http://127.0.0.1:99999/v1", "invalid port"),
    ("http://127.0.0.1:8000/v1?key=1", "query or fragment"),
])
def test_a_malformed_backend_url_is_refused_with_an_example(given: str, says: str):
    with pytest.raises(BackendError) as err:
        backend_base_url(given)
    assert says in str(err.value) and "http://127.0.0.1:8000/v1" in str(err.value)


@pytest.fixture
async def mock_server() -> AsyncIterator[MockOpenAIServer]:
    async with MockOpenAIServer() as server:
        server.options.model = "listed-model"
        yield server


async def test_the_server_is_asked_for_its_models(mock_server: MockOpenAIServer):
    url = mock_server.base_url + "/chat/completions"
    assert await asyncio.to_thread(probe_backend, url) == (mock_server.base_url,
                                                           ["listed-model"])
    # Without a path, /v1 is tried when the root does not answer.
    root = mock_server.base_url.removesuffix("/v1")
    assert (await asyncio.to_thread(probe_backend, root))[0] == mock_server.base_url


async def test_the_model_name_defaults_to_the_first_listed(mock_server: MockOpenAIServer):
    notes: list[str] = []
    chosen = await asyncio.to_thread(choose_backend, mock_server.base_url, None, notes.append)
    assert chosen == (mock_server.base_url, "listed-model") and not notes
    chosen = await asyncio.to_thread(choose_backend, mock_server.base_url, "other", notes.append)
    assert chosen == (mock_server.base_url, "other")
    assert len(notes) == 1 and "lists listed-model, not 'other'" in notes[0]
    assert choose_backend(None, None) == (None, MODEL_NAME)  # the embedded SmolLM2


async def test_a_wrong_path_or_a_foreign_server_is_named(mock_server: MockOpenAIServer):
    wrong = mock_server.base_url.removesuffix("/v1") + "/api"
    with pytest.raises(BackendError, match=r"/api/models answered HTTP 404: is .* the "
                                           r"server's OpenAI base URL"):
        await asyncio.to_thread(probe_backend, wrong)

    async def not_a_list(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/v1/models", not_a_list)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        with pytest.raises(BackendError, match="did not answer an OpenAI model list"):
            await asyncio.to_thread(probe_backend, f"http://127.0.0.1:{port}/v1")
    finally:
        await runner.cleanup()


def test_up_refuses_a_backend_that_does_not_answer_before_starting_anything(tmp_path: Path):
    root = tmp_path / "devnet"
    port = free_port()
    out = devnet("up", "--backend-url", f"http://127.0.0.1:{port}/v1", "--dir", str(root),
                 timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"error: no OpenAI-compatible server answers GET http://127.0.0.1:{port}/v1/models "
        "([Errno 111] Connection refused); start it first, or give its OpenAI base URL, "
        "such as http://127.0.0.1:8000/v1")
    assert not root.exists()  # nothing started, nothing written


def test_the_backend_flags_belong_to_up():
    out = devnet("status", "--slots", "8", timeout=60)
    assert out.returncode == 2 and "--slots: only with `up`" in out.stderr
    out = devnet("up", "--slots", "0", timeout=60)
    assert out.returncode == 2 and "0 is not at least 1" in out.stderr


# -- a whole devnet in front of the MOCK server -----------------------------------------------


@pytest.fixture(scope="module")
def mock_backend() -> Iterator[str]:
    port = free_port()
    proc: ManagedProcess = spawn_mock_openai(
        port, ["--tokens", "6", "--token-delay", "0.005", "--model", "mock-model"])
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.stop(timeout=10)


@pytest.fixture(scope="module")
def devnet_up(mock_backend: str, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    root = tmp_path_factory.mktemp("devnet-cli")
    out = devnet("up", "--backend-url", mock_backend + "/chat/completions", "--slots", "8",
                 "--model-name", "mock-model", "--dir", str(root))
    try:
        yield root, out
    finally:
        state_file = root / "state.json"
        if state_file.exists():  # the test did not get to `down`: stop what `up` started
            for pid in json.loads(state_file.read_text())["pids"].values():
                stop_process_group(pid)


@pytest.mark.integration
async def test_up_in_front_of_a_given_backend_then_down(
        devnet_up: tuple[Path, subprocess.CompletedProcess[str]], mock_backend: str):
    root, out = devnet_up
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout[out.stdout.index("\n{") :])  # after the progress lines
    assert printed["model"] == "mock-model" and printed["backend_url"] == mock_backend

    state = DevnetState.load(root)
    assert (state.model_name, state.backend_url, state.embedding_model_name) == (
        "mock-model", mock_backend, "")
    assert (state.concurrent_slots, state.backend_embedded) == (8, False)
    assert sorted(state.pids) == ["anvil", "consumer", "provider"]  # no llama.cpp
    config = json.loads((root / "models-config.json").read_text())["models"]
    assert [(m["modelName"], m["apiUrl"], m["concurrentSlots"]) for m in config] == [
        ("mock-model", mock_backend, 8)]

    body = {"model": "mock-model", "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.get(state.consumer_url + "/models") as resp:
            assert "mock-model" in [m["id"] for m in (await resp.json())["data"]]
        async with http.post(state.consumer_url + "/chat/completions", json=body,
                             timeout=aiohttp.ClientTimeout(total=60)) as resp:
            assert resp.status == 200, await resp.text()
            text = ""
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    for choice in chunk.get("choices") or ():
                        text += choice["delta"].get("content") or ""
    assert text == "tok " * 6  # the mock's canned tokens, through both routers

    status = devnet("status", "--dir", str(root), timeout=60)
    assert status.returncode == 0
    assert json.loads(status.stdout)["backend_url"] == mock_backend

    down = devnet("down", "--dir", str(root), timeout=120)
    assert down.returncode == 0 and down.stdout.strip() == "stopped"
    assert not (root / "state.json").exists()
    assert not any(is_alive(pid) for pid in state.pids.values())
