"""The operator commands, run as a user runs them: ``python -m proxy_router.cli`` subprocesses
against a fresh anvil, configured by environment variables only.

One chain per module: the ``market`` fixture deploys, imports the provider's key into a
keystore (the key on stdin) and registers a provider, a model and a bid through the CLI;
the tests then read, fail and settle on that market.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from proxy_router.chain.client import ChainClient
from proxy_router.chain.encoding import Approval, Receipt, sign_blob
from proxy_router.chain.marketplace import Marketplace, to_bytes32
from proxy_router.dev.anvil import Anvil, dev_address, dev_key
from proxy_router.morrpc import RpcServer, Signer

DEPLOYER, PROVIDER, USER = 0, 1, 2
PRICE = 10**12  # wei per second
PASSWORD = "correct horse battery staple"
MODEL = "TinyModel-1"


@dataclass
class Cli:
    """Runs the CLI in ``cwd`` with a clean environment plus ``env``."""

    cwd: Path
    env: dict[str, str]
    transcript: list[str] = field(default_factory=list)

    def _environ(self, extra: dict[str, str] | None) -> dict[str, str]:
        merged = {"PATH": "/usr/bin:/bin", **self.env, **(extra or {})}
        return {k: v for k, v in merged.items() if v is not None}

    def __call__(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None,
                 ok: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([sys.executable, "-m", "proxy_router.cli", *args], cwd=self.cwd,
                             env=self._environ(env), input=stdin if stdin is not None else "",
                             capture_output=True, text=True, timeout=120)
        self.transcript += [out.stdout, out.stderr]
        if ok:
            assert out.returncode == 0, f"{args}: {out.stderr}"
        return out

    async def run_async(self, *args: str, env: dict[str, str] | None = None
                        ) -> tuple[int, str, str]:
        """The same, without blocking the event loop (a provider served by this test)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy_router.cli", *args, cwd=self.cwd,
            env=self._environ(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
        self.transcript += [stdout.decode(), stderr.decode()]
        assert proc.returncode is not None
        return proc.returncode, stdout.decode(), stderr.decode()

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return json.loads(self(*args, "--json", env=env).stdout)


@dataclass
class Market:
    anvil: Anvil
    cli: Cli
    deployment: dict[str, Any]
    deploy_stdout: str
    keystore: Path
    model_id: str
    bid_id: str

    @property
    def as_user(self) -> dict[str, str]:
        """Environment for the user's wallet (a plain key instead of the keystore)."""
        return {"KEYSTORE_PATH": "", "KEYSTORE_PASSWORD_FILE": "",
                "WALLET_PRIVATE_KEY": dev_key(USER)}

    async def signer(self, account: int) -> Marketplace:
        client = await ChainClient.connect(self.anvil.rpc_url, dev_key(account))
        return Marketplace(client, self.deployment["marketplace_address"],
                           self.deployment["mor_token_address"])


def line_value(stdout: str, name: str) -> str:
    """The value of the ``NAME=value`` line in ``stdout``."""
    values = [ln.split("=", 1)[1] for ln in stdout.splitlines() if ln.startswith(f"{name}=")]
    assert len(values) == 1, f"no single {name}= line in {stdout!r}"
    return values[0]


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    work = tmp_path_factory.mktemp("operator")
    (work / "password").write_text(PASSWORD + "\n")
    with Anvil() as chain:
        cli = Cli(work, {"ETH_NODE_ADDRESS": chain.rpc_url})
        deployed = cli("deploy", "--fund", dev_address(PROVIDER), dev_address(USER),
                       "--fund-amount", "100", "--deployment-file", str(work / "dep.json"),
                       env={"WALLET_PRIVATE_KEY": dev_key(DEPLOYER)})
        keystore = work / "keys" / "provider.json"
        imported = cli("wallet", "import", "--keystore", str(keystore),
                       "--password-file", str(work / "password"), stdin=dev_key(PROVIDER) + "\n")
        assert imported.stdout.strip() == dev_address(PROVIDER)
        # From here on the configuration of a provider's .env: no plain key anywhere.
        cli.env.update({"DEPLOYMENT_FILE": line_value(deployed.stdout, "DEPLOYMENT_FILE"),
                        "KEYSTORE_PATH": str(keystore),
                        "KEYSTORE_PASSWORD_FILE": str(work / "password")})
        cli("provider", "register", "--endpoint", "127.0.0.1:9")
        model = cli("model", "register", "--name", MODEL, "--tags", "chat,small")
        bid = cli("bid", "post", "--model", MODEL, "--price", str(PRICE))
        yield Market(chain, cli, json.loads((work / "dep.json").read_text()), deployed.stdout,
                     keystore, line_value(model.stdout, "modelId"),
                     line_value(bid.stdout, "bidId"))


async def open_session(market: Market, seconds: int = 600) -> str:
    """A session of the user on the module's bid, the approval signed by the provider."""
    user = await market.signer(USER)
    try:
        block = await user.client.w3.eth.get_block("latest")
        approval = Approval(to_bytes32(market.bid_id), user.client.chain_id, user.client.address,
                            int(block["timestamp"])).encode()
        signature = sign_blob(Signer.from_key(dev_key(PROVIDER)).account, approval)
        session_id, _ = await user.open_session(PRICE * seconds, approval, signature)
        return session_id
    finally:
        await user.client.close()


# -- deploy and wallet ----------------------------------------------------------------------


def test_deploy_prints_the_routers_environment_and_writes_the_deployment_file(market: Market):
    dep, out = market.deployment, market.deploy_stdout
    assert line_value(out, "ETH_NODE_CHAIN_ID") == "31337" == str(dep["chain_id"])
    assert line_value(out, "MARKETPLACE_ADDRESS") == dep["marketplace_address"]
    assert line_value(out, "MOR_TOKEN_ADDRESS") == dep["mor_token_address"]
    assert line_value(out, "ETH_NODE_START_BLOCK") == str(dep["block_number"])
    assert Path(line_value(out, "DEPLOYMENT_FILE")) == market.cli.cwd / "dep.json"
    assert dep["deployer"] == dep["fee_recipient"] == dev_address(DEPLOYER)
    balance = market.cli.json("wallet", "balance", dev_address(USER))
    assert balance["mor"] == str(100 * 10**18) and int(balance["eth"]) > 0


def test_deploy_is_refused_on_a_mainnet_without_yes_mainnet(market: Market):
    out = market.cli("deploy", env={"NETWORK": "base", "WALLET_PRIVATE_KEY": dev_key(DEPLOYER),
                                    "KEYSTORE_PATH": "", "DEPLOYMENT_FILE": ""}, ok=False)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: NETWORK is base, a mainnet: add --yes-mainnet to "
                                  "deploy there")


def test_the_imported_keystore_is_private_and_no_key_or_password_was_ever_printed(market: Market):
    assert stat.S_IMODE(market.keystore.stat().st_mode) == 0o600
    assert market.cli("wallet", "address").stdout.strip() == dev_address(PROVIDER)
    transcript = "".join(market.cli.transcript)
    for secret in (dev_key(PROVIDER), dev_key(PROVIDER)[2:], dev_key(USER)[2:], PASSWORD):
        assert secret.lower() not in transcript.lower()


def test_wallet_import_takes_no_key_argument_and_never_echoes_one(market: Market):
    """(Every spelling of the attempt is covered in-process by test_help.py.)"""
    key = dev_key(USER)
    target = market.cli.cwd / "refused.json"
    out = market.cli("wallet", "import", "--keystore", str(target), "--password-file",
                     str(market.cli.cwd / "password"), "--private-key", key, stdin=key + "\n",
                     ok=False)
    assert out.returncode == 2 and "unrecognized arguments: --private-key …" in out.stderr
    assert key[2:].lower() not in (out.stdout + out.stderr).lower()
    assert not target.exists()


def test_wallet_new_without_a_password_file_outside_a_terminal_is_one_line(market: Market):
    out = market.cli("wallet", "new", "--keystore", str(market.cli.cwd / "new.json"), ok=False)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: no password: give --password-file FILE, or run in a "
                                  "terminal to be asked")
    made = market.cli("wallet", "new", "--keystore", str(market.cli.cwd / "new.json"),
                      "--password-file", str(market.cli.cwd / "password"))
    address = made.stdout.strip()
    assert address.startswith("0x") and len(address) == 42 and made.stdout.count("\n") == 1
    again = market.cli("wallet", "new", "--keystore", str(market.cli.cwd / "new.json"),
                       "--password-file", str(market.cli.cwd / "password"), ok=False)
    assert again.returncode == 1 and "not overwriting" in again.stderr


def test_wallet_send_moves_eth_and_mor_in_decimal_units(market: Market):
    to = "0x" + os.urandom(20).hex()
    sent = market.cli("wallet", "send", "MOR", "1.5", "--to", to)
    assert sent.stdout.startswith("sent 1.5 MOR (1500000000000000000 wei) to 0x")
    market.cli("wallet", "send", "eth", "0.25", "--to", to)
    assert market.cli.json("wallet", "balance", to) == {
        "address": Web3.to_checksum_address(to), "flavor": "native", "eth": str(25 * 10**16),
        "mor": str(15 * 10**17)}


def test_wallet_withdraw_held_is_the_morpheus_flavours_and_says_why(market: Market):
    out = market.cli("wallet", "withdraw-held", env=market.as_user, ok=False)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "error: wallet withdraw-held is for the Morpheus diamond (MARKETPLACE_FLAVOR=morpheus): "
        "the native marketplace refunds the unused stake at close and holds nothing"]


# -- provider, model, bid ----------------------------------------------------------------------


def test_the_registered_market_reads_back_as_json(market: Market):
    provider = market.cli.json("provider", "show")
    assert provider["id"] == dev_address(PROVIDER) and provider["status"] == "registered"
    assert provider["flavor"] == "native" and provider["activeBids"] == 1
    assert provider["endpoint"] == "127.0.0.1:9" and provider["bids"] == [market.bid_id]
    assert provider["stake"] == str(2 * 10**17)  # providerMinStake

    models = market.cli.json("model", "list")
    assert [(m["id"], m["name"], m["tags"], m["owner"]) for m in models] == [
        (market.model_id, MODEL, ["chat", "small"], dev_address(PROVIDER))]
    bids = market.cli.json("bid", "list", "--model", MODEL)
    assert [(b["id"], b["pricePerSecond"], b["provider"], b["modelName"]) for b in bids] == [
        (market.bid_id, str(PRICE), dev_address(PROVIDER), MODEL)]
    allowance = market.cli.json("wallet", "allowance")
    assert allowance["owner"] == dev_address(PROVIDER)
    assert allowance["spender"] == market.deployment["marketplace_address"]
    # 3 x the first stake was approved; both stakes and the bid fee have been drawn since
    assert allowance["allowance"] == str(3 * 2 * 10**17 - 2 * 10**17 - 10**17 - 3 * 10**17)


def test_a_revert_is_one_line_with_the_decoded_reason_and_exit_1(market: Market):
    out = market.cli("bid", "post", "--model", market.model_id, "--price", "1", ok=False)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: transaction reverted: PriceOutOfRange(pricePerSecond=1, "
        "minPricePerSecond=10000000000, maxPricePerSecond=100000000000000000000)"]
    out = market.cli("model", "deregister", market.model_id, ok=False)
    assert (out.returncode, out.stderr.strip()) == (
        1, "error: transaction reverted: ModelHasActiveBids")


@pytest.mark.parametrize(("env", "expected"), [
    ({"MARKETPLACE_ADDRESS": "0x1234"},
     "invalid configuration: MARKETPLACE_ADDRESS must be a 0x-prefixed 20-byte Ethereum address"),
    ({"KEYSTORE_PASSWORD_FILE": "/nonexistent/password"},
     "invalid configuration: KEYSTORE_PATH: cannot read password file /nonexistent/password: "
     "No such file or directory"),
    ({"KEYSTORE_PATH": "", "KEYSTORE_PASSWORD_FILE": ""},
     "invalid configuration: a wallet is required: set KEYSTORE_PATH (with "
     "KEYSTORE_PASSWORD_FILE) or WALLET_PRIVATE_KEY"),
])
def test_bad_configuration_is_one_line_and_exit_2(market: Market, env: dict[str, str],
                                                  expected: str):
    out = market.cli("provider", "update", "--endpoint", "127.0.0.1:9", env=env, ok=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [expected]


def test_an_unreachable_chain_is_one_line_and_exit_1(market: Market):
    out = market.cli("model", "list", env={"ETH_NODE_ADDRESS": "http://127.0.0.1:9"}, ok=False)
    assert out.returncode == 1 and out.stderr.startswith("error: cannot reach the chain")
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


# -- sessions and earnings -------------------------------------------------------------------


async def test_session_close_uses_the_providers_signed_receipt_when_it_answers(market: Market):
    """A provider that answers session.report (its MOR-RPC served by this test): the close
    is undisputed and pays it at once."""
    provider_key = dev_key(PROVIDER)
    server = RpcServer(Signer.from_key(provider_key))
    reports: list[str] = []

    @server.method("session.report")
    async def report(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        reports.append(params["sessionId"])
        receipt = Receipt(to_bytes32(params["sessionId"]), 31337, ctx.timestamp,
                          tps_x1000=20_000, ttft_ms=90).encode()
        signature = sign_blob(Signer.from_key(provider_key).account, receipt)
        return {"receipt": "0x" + receipt.hex(), "signature": "0x" + signature.hex()}

    port = await server.start()
    try:
        code, _, err = await market.cli.run_async("provider", "update", "--endpoint",
                                                  f"127.0.0.1:{port}")
        assert code == 0, err
        session_id = await open_session(market)
        code, out, err = await market.cli.run_async("session", "close", session_id, "--json",
                                                    env=market.as_user)
    finally:
        await server.stop()
        await market.cli.run_async("provider", "update", "--endpoint", "127.0.0.1:9")
    assert code == 0, err
    settled = json.loads(out)
    assert reports == [session_id]
    assert settled["sessionId"] == session_id and settled["disputed"] is False
    assert settled["held"] == "0"
    assert int(settled["providerEarned"]) + int(settled["userRefund"]) == int(settled["stake"])


async def test_an_unreachable_provider_means_a_dispute_held_then_claimed(market: Market):
    session_id = await open_session(market)
    listed = market.cli.json("session", "list", env=market.as_user)
    mine = {s["id"]: s for s in listed}[session_id]
    assert (mine["status"], mine["provider"], mine["modelName"], mine["stake"]) == (
        "open", dev_address(PROVIDER), MODEL, str(600 * PRICE))

    closed = market.cli("session", "close", session_id, env=market.as_user)
    assert closed.stdout.startswith(f"session {session_id} closed with our own receipt: a "
                                    "dispute")
    for label in ("stake", "provider earned", "user refund", "held"):
        assert any(ln.startswith(label) for ln in closed.stdout.splitlines()), label
    again = market.cli("session", "close", session_id, env=market.as_user, ok=False)
    assert (again.returncode, again.stderr.strip()) == (
        1, f"error: session {session_id} is already closed")

    earnings = market.cli.json("earnings")
    entry = {s["id"]: s for s in earnings["sessions"]}[session_id]
    assert entry["disputed"] and entry["held"] == entry["providerEarned"] != "0"
    assert entry["claimable"] is False and entry["state"].startswith("held until")
    assert int(earnings["held"]) >= int(entry["held"])

    market.anvil.increase_time(2 * 24 * 3600)  # past the dispute window
    claimed = market.cli.json("earnings", "--claim")
    assert [c["sessionId"] for c in claimed["claimed"]] == [session_id]
    assert claimed["claimed"][0]["amount"] == entry["held"]
    entry = {s["id"]: s for s in claimed["sessions"]}[session_id]
    assert entry["claimed"] and entry["held"] == "0" and entry["state"] == "claimed"
    assert claimed["claimable"] == "0"


def test_the_provider_leaves_the_market(market: Market):
    """Last: delete the bid, deregister the model and the provider; every stake comes back."""
    cli = market.cli
    assert cli("bid", "delete", market.bid_id).stdout.startswith(f"bid {market.bid_id} deleted")
    out = cli("model", "deregister", market.model_id)
    assert "stake 0.1 MOR (100000000000000000 wei) returned" in out.stdout
    out = cli("provider", "deregister")
    assert "stake 0.2 MOR (200000000000000000 wei) returned" in out.stdout
