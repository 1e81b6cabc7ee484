"""The scripts a user runs against a fresh anvil, in the README's order."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy_router.dev.anvil import Anvil, rpc

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fresh_anvil() -> Iterator[Anvil]:
    with Anvil() as chain:
        yield chain


def script(name: str, *args: str, cwd: Path, rpc_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), "--rpc-url", rpc_url,
                           *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})


def test_deploy_register_and_bid_leave_an_active_bid(tmp_path: Path, fresh_anvil: Anvil):
    url = fresh_anvil.rpc_url
    out = script("deploy.py", cwd=tmp_path, rpc_url=url)
    assert out.returncode == 0, out.stderr
    assert "MARKETPLACE_ADDRESS=0x" in out.stdout
    deployment = json.loads((tmp_path / ".devnet" / "deployment.json").read_text())

    for name, args in [("register_provider.py", ["--endpoint", "127.0.0.1:3333"]),
                       ("register_model.py", []), ("post_bid.py", ["--price", "1000000000000"])]:
        out = script(name, *args, cwd=tmp_path, rpc_url=url)
        assert out.returncode == 0, out.stderr
    bid_id = out.stdout.split()[1]

    # getBid through a raw eth_call: the bid exists, is active, has our price.
    selector = "0x" + __import__("eth_utils").keccak(text="getBid(bytes32)")[:4].hex()
    raw = rpc(url, "eth_call", [{"to": deployment["marketplace_address"],
                                 "data": selector + bid_id[2:]}, "latest"])
    words = [raw[2 + 64 * i: 2 + 64 * (i + 1)] for i in range((len(raw) - 2) // 64)]
    assert int(words[2], 16) == 10**12  # pricePerSecond
    assert int(words[5], 16) == 0  # deletedAt: active


@pytest.mark.parametrize("name", ["deploy.py", "register_provider.py", "register_model.py",
                                  "post_bid.py"])
def test_every_script_has_help(tmp_path: Path, name: str):
    out = subprocess.run([sys.executable, str(REPO / "scripts" / name), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--rpc-url" in out.stdout


def test_an_unreachable_chain_is_one_line_without_traceback(tmp_path: Path):
    out = script("deploy.py", cwd=tmp_path, rpc_url="http://127.0.0.1:9")
    assert out.returncode == 1
    assert out.stderr.startswith("error: cannot reach the chain")
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_revert_is_one_line_with_the_decoded_reason(tmp_path: Path, fresh_anvil: Anvil):
    url = fresh_anvil.rpc_url
    assert script("deploy.py", cwd=tmp_path, rpc_url=url).returncode == 0
    out = script("register_provider.py", "--stake", "0.01", cwd=tmp_path, rpc_url=url)
    assert out.returncode == 1
    assert out.stderr.strip() == ("error: transaction reverted: StakeTooLow("
                                  "required=200000000000000000, given=10000000000000000)")


def test_a_missing_deployment_file_says_what_to_run(tmp_path: Path, fresh_anvil: Anvil):
    out = script("post_bid.py", cwd=tmp_path, rpc_url=fresh_anvil.rpc_url)
    assert out.returncode == 1 and "run scripts/deploy.py first" in out.stderr
