"""A whole local marketplace in background processes: anvil, contracts, llama.cpp,
provider and consumer routers.

``scripts/devnet.py`` (up/status/down/demo) and the integration tests use it.
Every process is started (``proxy_router.process.spawn``) in its own session with
its log under the state folder, and ``down`` stops exactly the PIDs that ``up``
recorded in state.json (``stop_process_group``: it may run in another process).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from eth_utils import keccak

from proxy_router.chain.client import ChainClient
from proxy_router.chain.deploy import deploy_all
from proxy_router.chain.markets import open_market
from proxy_router.consumer.access import token_path
from proxy_router.dev.anvil import ANVIL_CHAIN_ID, anvil_binary, dev_address, dev_key, rpc
from proxy_router.dev.morpheus_net import Kind
from proxy_router.dev.morpheus_net import deploy as deploy_morpheus
from proxy_router.dev.smollm2 import smollm2_gguf_path
from proxy_router.ports import free_port, port_open
from proxy_router.process import ManagedProcess, is_alive, spawn, stop_process_group, wait_until
from proxy_router.provider.llama import EmbeddedLlamaServer

DEPLOYER, PROVIDER, USER, FEE_RECIPIENT = 0, 1, 2, 9
MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDING_MODEL_NAME = "SmolLM2-135M-Embedding"
"""The same GGUF in llama.cpp's embedding mode (mean-pooled), tagged ``embedding``."""
PRICE_PER_SECOND = 10**14  # 0.0001 MOR/s
ROUTER_ENV_KEYS = ("ETH_NODE_ADDRESS", "ETH_NODE_CHAIN_ID", "ETH_NODE_START_BLOCK",
                   "WALLET_PRIVATE_KEY", "KEYSTORE_PATH", "NETWORK", "DEPLOYMENT_FILE",
                   "MARKETPLACE_ADDRESS", "MOR_TOKEN_ADDRESS", "PROXY_ADDRESS", "WEB_ADDRESS",
                   "MARKETPLACE_FLAVOR", "DIAMOND_CONTRACT_ADDRESS", "SESSION_PAYMENT",
                   "PROVIDER_WIRE", "MODELS_CONFIG_PATH", "MODELS_CONFIG_CONTENT",
                   "PROXY_STORAGE_PATH")
Flavor = Literal["native", "morpheus"]


@dataclass
class DevnetState:
    rpc_url: str
    chain_id: int
    marketplace_address: str
    mor_token_address: str
    fee_recipient: str
    consumer_url: str
    consumer_base: str
    provider_endpoint: str
    backend_url: str
    model_id: str
    model_name: str
    bid_id: str
    user_address: str
    provider_address: str
    root: str
    pids: dict[str, int] = field(default_factory=dict)
    deploy_block: int = 0
    """The block the contracts were deployed in: where routers' market indexes start."""
    flavor: str = "native"
    """``morpheus``: the marketplace is a Morpheus-Lumerin diamond (``diamond`` says which)."""
    diamond: str = ""
    """``double`` (ours) or ``reference`` (the reference's own contracts), or ""."""
    funding_account: str = ""
    """Morpheus: the account whose MOR pays stake-mode sessions."""
    embedding_model_name: str = ""
    """The model ``/v1/embeddings`` answers for ("" when the devnet runs none: a devnet
    in front of a given backend)."""
    embedding_model_id: str = ""
    embedding_bid_id: str = ""
    concurrent_slots: int = 0
    """The model's ``concurrentSlots`` in the provider's models-config.json (0: unknown,
    a state file written before it was recorded)."""
    backend_embedded: bool = False
    """True: ``backend_url`` is the llama.cpp server the devnet started (``pids["llama"]``);
    False: a server that was already running (``up --backend-url``, or a test's mock)."""

    def save(self) -> None:
        path = Path(self.root) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, root: Path) -> DevnetState:
        return cls(**json.loads((root / "state.json").read_text()))

    def api_token_path(self, consumer: str = "consumer") -> Path:
        """Where a devnet consumer (it has no API_TOKEN) writes its token at every start;
        ``consumer`` names another one started by ``Devnet.add_consumer`` (``consumer5``)."""
        return token_path(Path(self.root) / f"{consumer}-data")

    def api_token(self, consumer: str = "consumer") -> str:
        return self.api_token_path(consumer).read_text().strip()

    def auth(self, consumer: str = "consumer") -> dict[str, str]:
        """Headers that let a request open and close sessions on that consumer."""
        return {"Authorization": f"Bearer {self.api_token(consumer)}"}


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class BackendError(ValueError):
    """A backend URL (``devnet.py up --backend-url``) is malformed, or no OpenAI-compatible
    server answers ``GET /models`` there; the message says which and what to give."""


_ENDPOINT_SUFFIXES = ("/chat/completions", "/completions", "/embeddings", "/models")
_URL_EXAMPLE = "such as http://127.0.0.1:8000/v1"


def backend_base_url(url: str) -> str:
    """The OpenAI base URL (``.../v1``) of ``url``: a trailing ``/`` and a full endpoint
    URL (``.../v1/chat/completions``, ``.../v1/models``...) are cut back. Only http(s)
    with a host and no query or fragment; else ``BackendError``."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendError(f"backend URL {url!r} is not an http(s) URL with a host; give the "
                           f"server's OpenAI base URL, {_URL_EXAMPLE}")
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
    except ValueError:
        raise BackendError(f"backend URL {url!r} has an invalid port; give the server's "
                           f"OpenAI base URL, {_URL_EXAMPLE}") from None
    if parts.query or parts.fragment:
        raise BackendError(f"backend URL {url!r} has a query or fragment; give the server's "
                           f"OpenAI base URL, {_URL_EXAMPLE}")
    path = parts.path.rstrip("/")
    for suffix in _ENDPOINT_SUFFIXES:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def backend_models(base_url: str, timeout: float = 5.0) -> list[str]:
    """The model ids ``GET <base_url>/models`` lists (an OpenAI model list); ``BackendError``
    when nothing answers there, or not with such a list."""
    url = base_url + "/models"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise BackendError(f"GET {url} answered HTTP {exc.code}: is {base_url} the server's "
                           f"OpenAI base URL (usually ending in /v1)?") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BackendError(f"no OpenAI-compatible server answers GET {url} ({reason}); start "
                           f"it first, or give its OpenAI base URL, {_URL_EXAMPLE}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
        raise BackendError(f"GET {url} did not answer an OpenAI model list "
                           '({"data": [{"id": ...}, ...]}): is it an OpenAI-compatible server?')
    return [m["id"] for m in data]


def probe_backend(url: str, timeout: float = 5.0) -> tuple[str, list[str]]:
    """Check ``url`` before a devnet is started in front of it: (its OpenAI base URL, the
    model ids it lists). A URL without a path that does not answer is tried with ``/v1``
    (``http://host:8000`` for ``http://host:8000/v1``)."""
    base = backend_base_url(url)
    try:
        return base, backend_models(base, timeout)
    except BackendError:
        if urlsplit(base).path:
            raise
        try:
            return base + "/v1", backend_models(base + "/v1", timeout)
        except BackendError:
            pass
        raise


def choose_backend(backend_url: str | None, model_name: str | None = None,
                   note: Callable[[str], None] = print) -> tuple[str | None, str]:
    """What ``devnet.py up`` runs: (the backend's OpenAI base URL, or None for the embedded
    SmolLM2; the model name). The name defaults to ``MODEL_NAME`` when embedded, else to
    the first model id the server lists; a name it does not list is used with a ``note``
    (servers that ignore ``model`` list one name and answer to any). Checked before
    anything starts: ``BackendError`` says what is wrong."""
    if backend_url is None:
        return None, model_name or MODEL_NAME
    base, listed = probe_backend(backend_url)
    if model_name:
        if listed and model_name not in listed:
            shown = ", ".join(listed[:5]) + (" ..." if len(listed) > 5 else "")
            note(f"note: {base}/models lists {shown}, not {model_name!r}; using it anyway "
                 "(the provider sends it to the server as `model`)")
        return base, model_name
    if not listed:
        raise BackendError(f"{base}/models lists no model; name the one to serve with "
                           "--model-name")
    return base, listed[0]


def router_command() -> list[str]:
    exe = Path(sys.executable).with_name("proxy-router")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "proxy_router.cli"]


class Devnet:
    def __init__(self, root: Path, progress: Callable[[str], None] = print) -> None:
        self.root = root
        self.progress = progress
        self.pids: dict[str, int] = {}
        self._procs: dict[str, ManagedProcess] = {}
        self._commands: dict[str, list[str]] = {}
        self._common_env: dict[str, str] = {}
        self.state: DevnetState | None = None
        self._started = time.monotonic()
        self.flavor: Flavor = "native"
        self.diamond: Kind = "double"

    def _say(self, message: str) -> None:
        self.progress(f"[{time.monotonic() - self._started:6.1f}s] {message}")

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> int:
        """Start ``name`` (log ``<root>/<name>.log``, appended) and record its PID in
        state.json at once, so ``down`` can stop it even if ``up`` dies half-way."""
        # Our own router settings must not leak in: each router reads its env file.
        base = {k: v for k, v in os.environ.items() if k not in ROUTER_ENV_KEYS}
        proc = spawn(cmd, name=name, env={**base, **(env or {})},
                     log_path=self.root / f"{name}.log", cwd=self.root)
        self.pids[name] = proc.pid
        self._procs[name] = proc
        self._commands[name] = cmd
        if self.state is not None:
            self.state.pids = dict(self.pids)
            self.state.save()
        return proc.pid

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float,
                   pid_name: str | None = None) -> None:
        """Wait for ``check``; fail early (with its log tail) if process ``pid_name`` exits."""
        wait_until(check, timeout, what,
                   process=self._procs[pid_name] if pid_name else None)

    # -- up ---------------------------------------------------------------------

    def up(self, *, backend_url: str | None = None, concurrent_slots: int = 4,
           extra_router_env: dict[str, str] | None = None,
           anvil_state: bool = False, flavor: Flavor = "native",
           diamond: Kind = "double", model_name: str | None = None) -> DevnetState:
        """Start the stack; with ``backend_url`` the provider uses that server instead
        of starting llama.cpp (tests pass a mock backend there; ``probe_backend`` checks
        one first) and no embedding server runs. ``model_name`` (default
        ``MODEL_NAME``) is registered on chain and sent to the backend as ``model``.
        ``flavor="morpheus"`` trades on a Morpheus-Lumerin diamond: our double, or the
        reference's own contracts (``diamond="reference"``, needs ``MORPHEUS_SRC``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.flavor, self.diamond = flavor, diamond
        try:
            return self._up(backend_url, concurrent_slots, extra_router_env or {}, anvil_state,
                            model_name=model_name or MODEL_NAME)
        except BaseException:
            self.down_pids(self.pids)
            raise

    def _up(self, backend_url: str | None, slots: int,
            extra_env: dict[str, str], anvil_state: bool, *,
            model_name: str = MODEL_NAME) -> DevnetState:
        anvil_port = free_port()
        rpc_url = f"http://127.0.0.1:{anvil_port}"
        self._say(f"starting anvil on {rpc_url}")
        anvil_cmd = [anvil_binary(), "--host", "127.0.0.1", "--port", str(anvil_port),
                     "--chain-id", str(ANVIL_CHAIN_ID)]
        if anvil_state:  # loaded when present, dumped on SIGTERM: restarts keep the chain
            anvil_cmd += ["--state", str((self.root / "anvil-state.json").resolve())]
        self.spawn("anvil", anvil_cmd)
        self.wait_until("anvil", lambda: _rpc_ok(rpc_url), 30, "anvil")

        embedding_url = ""
        if backend_url is None:
            gguf = smollm2_gguf_path()
            llama = EmbeddedLlamaServer(gguf, port=free_port(), model_alias=model_name,
                                        n_ctx=2048, n_threads=2)
            self._say(f"starting llama.cpp with {gguf.name} (loading the model...)")
            self.spawn("llama", llama.command())
            backend_url = llama.base_url
            embedder = EmbeddedLlamaServer(gguf, port=free_port(),
                                           model_alias=EMBEDDING_MODEL_NAME, n_ctx=2048,
                                           n_threads=1, embedding=True)
            self.spawn("llama-embed", embedder.command())
            embedding_url = embedder.base_url

        provider_port = free_port()
        endpoint = f"127.0.0.1:{provider_port}"
        what = f"the Morpheus diamond ({self.diamond})" if self.flavor == "morpheus" \
            else "MorToken + Marketplace"
        self._say(f"deploying {what}, registering provider, model and bid")
        chain = asyncio.run(self._onboard(rpc_url, endpoint, embeddings=bool(embedding_url),
                                          model_name=model_name))

        if "llama" in self.pids:
            self.wait_until("llama.cpp", lambda: _http_ok(backend_url + "/models"), 180, "llama")
            self._say(f"llama.cpp ready at {backend_url}")
        models = [{"modelId": chain["model_id"], "modelName": model_name, "apiType": "openai",
                   "apiUrl": backend_url, "concurrentSlots": slots}]
        if embedding_url:
            self.wait_until("llama.cpp embeddings",
                            lambda: _http_ok(embedding_url + "/models"), 180, "llama-embed")
            models.append({"modelId": chain["embedding_model_id"],
                           "modelName": EMBEDDING_MODEL_NAME, "modelType": "embedding",
                           "apiUrl": embedding_url, "concurrentSlots": slots})

        models_config = self.root / "models-config.json"
        models_config.write_text(json.dumps({"models": models}, indent=2) + "\n")
        market_env = {"MARKETPLACE_FLAVOR": "morpheus",
                      "DIAMOND_CONTRACT_ADDRESS": chain["marketplace"]} \
            if self.flavor == "morpheus" else {"MARKETPLACE_ADDRESS": chain["marketplace"]}
        common = {"ETH_NODE_ADDRESS": rpc_url, "ETH_NODE_CHAIN_ID": str(ANVIL_CHAIN_ID),
                  "ETH_NODE_START_BLOCK": chain["deploy_block"], **market_env,
                  "MOR_TOKEN_ADDRESS": chain["token"], "ETH_NODE_POLLING_INTERVAL": "0.5",
                  "LOG_FORMAT": "json", **extra_env}
        self._common_env = common
        self._write_env("provider.env", {**common, "WALLET_PRIVATE_KEY": dev_key(PROVIDER),
                                         "PROXY_ADDRESS": endpoint,
                                         "MODELS_CONFIG_PATH": str(models_config.resolve()),
                                         "PROXY_STORAGE_PATH": str(self.root / "provider-data")})
        consumer_port = free_port()
        consumer_base = f"http://127.0.0.1:{consumer_port}"
        self._write_env("consumer.env", {**common, "WALLET_PRIVATE_KEY": dev_key(USER),
                                         "WEB_ADDRESS": f"127.0.0.1:{consumer_port}",
                                         "PROXY_STORAGE_PATH": str(self.root / "consumer-data")})
        self._say(f"starting provider proxy-router on {endpoint}")
        self.spawn("provider", [*router_command(), "--role", "provider", "--env-file",
                                str((self.root / "provider.env").resolve())])
        self._say(f"starting consumer proxy-router on {consumer_base}")
        self.spawn("consumer", [*router_command(), "--role", "consumer", "--env-file",
                                str((self.root / "consumer.env").resolve())])
        self.wait_until("provider", lambda: port_open(provider_port), 60, "provider")
        self.wait_until("consumer", lambda: _models_listed(consumer_base, model_name), 60,
                        "consumer")
        state = DevnetState(
            rpc_url=rpc_url, chain_id=ANVIL_CHAIN_ID, marketplace_address=chain["marketplace"],
            mor_token_address=chain["token"], fee_recipient=dev_address(FEE_RECIPIENT),
            consumer_url=consumer_base + "/v1", consumer_base=consumer_base,
            provider_endpoint=endpoint, backend_url=backend_url, model_id=chain["model_id"],
            model_name=model_name, bid_id=chain["bid_id"], user_address=dev_address(USER),
            provider_address=dev_address(PROVIDER), root=str(self.root), pids=dict(self.pids),
            deploy_block=int(chain["deploy_block"]), flavor=self.flavor,
            diamond=self.diamond if self.flavor == "morpheus" else "",
            funding_account=chain.get("funding_account", ""),
            embedding_model_name=EMBEDDING_MODEL_NAME if embedding_url else "",
            embedding_model_id=chain.get("embedding_model_id", ""),
            embedding_bid_id=chain.get("embedding_bid_id", ""),
            concurrent_slots=slots, backend_embedded="llama" in self.pids)
        state.save()
        self.state = state
        self._say("devnet is up")
        return state

    # -- process control for fault tests -------------------------------------------

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process group (SIGKILL by default: a crash) and reap it."""
        self._procs[name].kill(sig, timeout=30)

    def stop(self, name: str) -> None:
        """A clean stop (SIGTERM; anvil dumps its --state file on it)."""
        self._procs[name].stop()

    def start(self, name: str, env: dict[str, str] | None = None) -> int:
        """Start ``name`` again with the command it was first started with."""
        return self.spawn(name, self._commands[name], env)

    def add_provider(self, account: int, backend_url: str | None, price: int,
                     slots: int = 4, *, backend_urls: list[str] | None = None,
                     extra_env: dict[str, str] | None = None) -> tuple[str, str]:
        """Register dev ``account`` as another provider bidding on the model, start
        its router, and return (endpoint, bid id). ``backend_urls``: several backends
        behind the model (each with ``slots``), instead of ``backend_url``."""
        assert self.state is not None
        api_url: str | list[str] | None = backend_urls or backend_url
        assert api_url, "a backend_url or backend_urls is needed"
        port = free_port()
        endpoint = f"127.0.0.1:{port}"
        name = f"provider{account}"
        bid_id = asyncio.run(self._onboard_provider(account, endpoint, price))
        config = self.root / f"models-config-{account}.json"
        config.write_text(json.dumps({"models": [{
            "modelId": self.state.model_id, "modelName": self.state.model_name or MODEL_NAME,
            "apiType": "openai", "apiUrl": api_url, "concurrentSlots": slots}]}) + "\n")
        self._write_env(f"{name}.env", {**self._common_env,
                                        "WALLET_PRIVATE_KEY": dev_key(account),
                                        "PROXY_ADDRESS": endpoint,
                                        "MODELS_CONFIG_PATH": str(config.resolve()),
                                        "PROXY_STORAGE_PATH": str(self.root / f"{name}-data"),
                                        **(extra_env or {})})
        self.spawn(name, [*router_command(), "--role", "provider", "--env-file",
                          str((self.root / f"{name}.env").resolve())])
        self.wait_until(name, lambda: port_open(port), 60, name)
        return endpoint, bid_id

    def add_consumer(self, account: int, overrides: dict[str, str] | None = None) -> str:
        """Start another consumer router for dev ``account``; returns its base URL."""
        port = free_port()
        name = f"consumer{account}"
        self._write_env(f"{name}.env", {**self._common_env,
                                        "WALLET_PRIVATE_KEY": dev_key(account),
                                        "WEB_ADDRESS": f"127.0.0.1:{port}",
                                        "PROXY_STORAGE_PATH": str(self.root / f"{name}-data"),
                                        **(overrides or {})})
        self.spawn(name, [*router_command(), "--role", "consumer", "--env-file",
                          str((self.root / f"{name}.env").resolve())])
        base = f"http://127.0.0.1:{port}"
        model_name = self.state.model_name if self.state is not None else MODEL_NAME
        self.wait_until(name, lambda: _models_listed(base, model_name), 60, name)
        return base

    async def _onboard_provider(self, account: int, endpoint: str, price: int) -> str:
        assert self.state is not None
        client = await ChainClient.connect(self.state.rpc_url, dev_key(account))
        try:
            market = open_market(client, "morpheus" if self.state.flavor == "morpheus"
                                 else "native", self.state.marketplace_address,
                                 self.state.mor_token_address)
            await market.register_provider(await market.provider_min_stake(), endpoint)
            bid_id, _ = await market.post_bid(self.state.model_id, price)
        finally:
            await client.close()
        return bid_id

    def _write_env(self, name: str, values: dict[str, str]) -> None:
        path = self.root / name
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        path.chmod(0o600)

    async def _onboard(self, rpc_url: str, endpoint: str, *, embeddings: bool,
                       model_name: str = MODEL_NAME) -> dict[str, str]:
        """Deploy the marketplace of ``self.flavor``, then list the model on it (and the
        embedding model, when ``embeddings``)."""
        if self.flavor == "morpheus":
            net = await deploy_morpheus(self.diamond, rpc_url)
            chain = {"marketplace": net.diamond, "token": net.mor,
                     "deploy_block": str(net.deploy_block),
                     "funding_account": net.funding_account}
        else:
            deployer = await ChainClient.connect(rpc_url, dev_key(DEPLOYER))
            try:
                dep = await deploy_all(deployer, fee_recipient=dev_address(FEE_RECIPIENT),
                                       fund=[dev_address(i) for i in range(1, 9)])
            finally:
                await deployer.close()
            chain = {"marketplace": dep.marketplace_address, "token": dep.mor_token_address,
                     "deploy_block": str(dep.block_number)}
        client = await ChainClient.connect(rpc_url, dev_key(PROVIDER))
        try:
            market = open_market(client, self.flavor, chain["marketplace"], chain["token"])
            await market.register_provider(await market.provider_min_stake(), endpoint)
            tags = ["llm", "gguf", "smollm2"] if model_name == MODEL_NAME else ["llm"]
            chain["model_id"], _ = await market.register_model(
                keccak(text=model_name), b"\x00" * 32, await market.model_min_stake(),
                model_name, tags)
            chain["bid_id"], _ = await market.post_bid(chain["model_id"], PRICE_PER_SECOND)
            if embeddings:
                chain["embedding_model_id"], _ = await market.register_model(
                    keccak(text=EMBEDDING_MODEL_NAME), b"\x00" * 32,
                    await market.model_min_stake(), EMBEDDING_MODEL_NAME,
                    ["embedding", "gguf", "smollm2"])
                chain["embedding_bid_id"], _ = await market.post_bid(
                    chain["embedding_model_id"], PRICE_PER_SECOND)
        finally:
            await client.close()
        return chain

    # -- down ---------------------------------------------------------------------

    @staticmethod
    def down_pids(pids: dict[str, int]) -> None:
        """Stop routers first (they may settle), then the backend, then the chain."""
        order = ["consumer", "provider", "llama", "anvil"]

        def rank(name: str) -> int:
            base = name.rstrip("0123456789").removesuffix("-embed")
            return order.index(base) if base in order else -1

        for name in sorted(pids, key=rank):
            stop_process_group(pids[name])

    def down(self) -> bool:
        state_file = self.root / "state.json"
        if not state_file.exists():
            return False
        state = DevnetState.load(self.root)
        self.down_pids(state.pids)
        state_file.unlink()
        for folder in ("provider-data", "consumer-data"):
            shutil.rmtree(self.root / folder, ignore_errors=True)
        return True

    @staticmethod
    def status(root: Path) -> dict[str, object]:
        state = DevnetState.load(root)
        return {"processes": {name: is_alive(pid) for name, pid in state.pids.items()},
                "consumer_healthy": _http_ok(state.consumer_base + "/healthcheck"),
                "consumer_url": state.consumer_url, "model": state.model_name,
                "backend_url": state.backend_url}


def _rpc_ok(url: str) -> bool:
    try:
        rpc(url, "eth_chainId", timeout=1.0)
        return True
    except OSError:
        return False


def _models_listed(base: str, name: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/v1/models", timeout=2) as resp:
            return any(m["id"] == name for m in json.loads(resp.read())["data"])
    except (OSError, ValueError, KeyError):
        return False
