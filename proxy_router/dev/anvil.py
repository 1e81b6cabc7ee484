"""Start and stop a local anvil chain (npm ``@foundry-rs/anvil``).

Used by the test fixtures, the benchmarks and ``scripts/devnet.py``; anvil's
well-known development accounts are derived from its public test mnemonic.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from eth_account import Account

from proxy_router.ports import free_port
from proxy_router.process import ManagedProcess, spawn

# Public, well-known mnemonic of anvil/hardhat dev chains. Never holds real value.
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
ANVIL_CHAIN_ID = 31337
# A checkout's root (its node_modules/.bin/anvil); in an installed package, site-packages.
REPO_ROOT = Path(__file__).resolve().parents[2]


@cache
def dev_key(index: int) -> str:
    """Private key (0x-hex) of anvil's dev account ``index``."""
    Account.enable_unaudited_hdwallet_features()
    acct = Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + bytes(acct.key).hex()


def dev_address(index: int) -> str:
    return Account.from_key(dev_key(index)).address


def anvil_binary() -> str:
    local = REPO_ROOT / "node_modules" / ".bin" / "anvil"
    if local.exists():
        return str(local)
    found = shutil.which("anvil")
    if found:
        return found
    raise FileNotFoundError("anvil not found: run `npm ci` in the repository root")


def rpc(url: str, method: str, params: list | None = None, timeout: float = 5.0) -> object:
    """One synchronous JSON-RPC call (for process management, not app code)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    req = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        reply = json.loads(resp.read())
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


@dataclass
class Anvil:
    """One anvil process on 127.0.0.1; ``start`` blocks until it answers."""

    port: int = field(default_factory=free_port)
    chain_id: int = ANVIL_CHAIN_ID
    state_path: Path | None = None
    block_time: float | None = None
    log_path: Path | None = None
    process: ManagedProcess | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Anvil:
        cmd = [anvil_binary(), "--host", "127.0.0.1", "--port", str(self.port),
               "--chain-id", str(self.chain_id), "--accounts", "10"]
        if self.state_path is not None:
            # --state loads the file when present and dumps to it on exit.
            cmd += ["--state", str(self.state_path)]
        if self.block_time:
            cmd += ["--block-time", str(self.block_time)]
        self.process = spawn(cmd, name=f"anvil on {self.rpc_url}", log_path=self.log_path,
                             ready=self._answers, timeout=timeout, interval=0.1)
        return self

    def _answers(self) -> bool:
        try:
            rpc(self.rpc_url, "eth_chainId", timeout=1.0)
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM (anvil dumps --state on it), then SIGKILL after 10 s."""
        proc, self.process = self.process, None
        if proc is not None:
            proc.stop(timeout=10)

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Time travel and snapshots, for tests.
    def increase_time(self, seconds: int) -> None:
        rpc(self.rpc_url, "evm_increaseTime", [seconds])
        rpc(self.rpc_url, "evm_mine")

    def snapshot(self) -> str:
        return str(rpc(self.rpc_url, "evm_snapshot"))

    def revert(self, snapshot_id: str) -> None:
        rpc(self.rpc_url, "evm_revert", [snapshot_id])
