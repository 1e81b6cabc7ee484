"""The committed contract artifacts match a fresh compile, expose the fixed public ABI and
are read as package data (so an installed wheel finds them)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from proxy_router.chain import artifacts

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "proxy_router" / "chain" / "build"
COMPILE = REPO / "scripts" / "compile.py"


def _load_compile_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compile_contracts", COMPILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compile_mod = _load_compile_module()


def _artifact(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((BUILD / f"{name}.json").read_text())
    return data


def _canonical(param: dict[str, Any]) -> str:
    typ: str = param["type"]
    if typ.startswith("tuple"):
        return "(" + ",".join(_canonical(c) for c in param["components"]) + ")" + typ[5:]
    return typ


def _signatures(abi: list[dict[str, Any]], kind: str) -> set[str]:
    return {
        f"{item['name']}({','.join(_canonical(i) for i in item['inputs'])})"
        for item in abi
        if item["type"] == kind
    }


def test_solc_version_pinned_in_package_json() -> None:
    package = json.loads((REPO / "package.json").read_text())
    assert package["devDependencies"]["solc"] == compile_mod.SOLC_VERSION
    lock = json.loads((REPO / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/solc"]["version"] == compile_mod.SOLC_VERSION


def test_committed_artifacts_are_well_formed() -> None:
    for name in ("MorToken", "Marketplace"):
        art = _artifact(name)
        assert art["contractName"] == name
        assert art["bytecode"].startswith("0x") and len(art["bytecode"]) > 2
        assert art["deployedBytecode"].startswith("0x")
        assert art["compiler"]["version"].startswith(compile_mod.SOLC_VERSION + "+commit.")
        assert art["compiler"]["settings"] == compile_mod.SETTINGS
        # EIP-170: deployable on mainnet-like chains.
        assert (len(art["deployedBytecode"]) - 2) // 2 <= 24_576


def test_marketplace_public_abi() -> None:
    abi = _artifact("Marketplace")["abi"]
    functions = _signatures(abi, "function")
    for sig in (
        "providerRegister(uint256,string)",
        "providerDeregister()",
        "modelRegister(bytes32,bytes32,uint256,string,string[])",
        "modelDeregister(bytes32)",
        "postModelBid(bytes32,uint256)",
        "deleteModelBid(bytes32)",
        "openSession(uint256,bytes,bytes)",
        "closeSession(bytes,bytes)",
        "claimForProvider(bytes32)",
        "getProvider(address)",
        "getModel(bytes32)",
        "getBid(bytes32)",
        "getSession(bytes32)",
        "getProviderModelStats(address,bytes32)",
        "getActiveBidId(address,bytes32)",
        "getActiveBidsByModel(bytes32,uint256,uint256)",
        "getActiveBidsByProvider(address,uint256,uint256)",
        "getSessionsByUser(address,uint256,uint256)",
        "getSessionsByProvider(address,uint256,uint256)",
        "getModelIds(uint256,uint256)",
        "getProviders(uint256,uint256)",
        "providerMinStake()",
        "modelMinStake()",
        "bidFee()",
        "minPricePerSecond()",
        "maxPricePerSecond()",
        "approvalTtl()",
        "minSessionDuration()",
        "maxSessionDuration()",
        "disputeWindow()",
        "feeRecipient()",
        "morToken()",
    ):
        assert sig in functions, sig
    events = _signatures(abi, "event")
    for sig in (
        "ProviderRegistered(address)",
        "ProviderDeregistered(address)",
        "ModelRegistered(address,bytes32)",
        "ModelDeregistered(address,bytes32)",
        "BidPosted(address,bytes32,bytes32)",
        "BidDeleted(address,bytes32,bytes32)",
        "SessionOpened(address,bytes32,address)",
        "SessionClosed(address,bytes32,address)",
        "SessionSettled(bytes32,uint256,uint256,uint256,bool)",
        "ProviderClaimed(address,bytes32,uint256)",
    ):
        assert sig in events, sig
    # Every id in an event is an indexed topic.
    for item in abi:
        if item["type"] == "event":
            for arg in item["inputs"]:
                if arg["name"] in ("provider", "user", "owner", "modelId", "bidId", "sessionId"):
                    assert arg["indexed"], (item["name"], arg["name"])


def test_mor_token_abi() -> None:
    functions = _signatures(_artifact("MorToken")["abi"], "function")
    assert {
        "mint(address,uint256)",
        "transfer(address,uint256)",
        "approve(address,uint256)",
        "decimals()",
        "symbol()",
        "name()",
    } <= functions


def _have_compiler() -> bool:
    return shutil.which("node") is not None or compile_mod.find_native_solc() is not None


@pytest.mark.skipif(not _have_compiler(), reason="needs node (npm solc) or a native solc")
def test_committed_artifacts_match_fresh_compile(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(COMPILE), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_text() for p in BUILD.glob("*.json")}
    assert sorted(fresh) == sorted(committed)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"{stale} differ from a fresh compile: run `python scripts/compile.py`"
    # What `compile.py --check` reports: nothing for the committed tree, drift for a tampered copy.
    assert compile_mod.check(BUILD, fresh) == []
    (tmp_path / "MorToken.json").write_text("{}\n")
    (tmp_path / "Old.json").write_text('{"contractName": "Old", "compiler": {}}\n')
    problems = compile_mod.check(tmp_path, fresh)
    assert any(p.startswith("differs:") and "MorToken" in p for p in problems)
    assert any(p.startswith("stale:") and "Old.json" in p for p in problems)


def test_compile_writes_where_the_package_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(artifacts.ARTIFACTS_ENV, raising=False)
    assert compile_mod.DEFAULT_OUT == BUILD
    packaged = artifacts.artifacts_dir()
    assert {p.name for p in packaged.iterdir() if p.name.endswith(".json")} == {
        "Marketplace.json", "MorToken.json", "MorpheusDiamondDouble.json", "IMorpheusDiamond.json"}
    assert packaged.joinpath("Marketplace.json").read_text() == (
        BUILD / "Marketplace.json").read_text()
    assert not (REPO / "contracts" / "build").exists(), "artifacts moved into the package"


def test_the_loader_reads_package_data_not_the_repository(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No path above the package: what the wheel carries is all it needs."""
    monkeypatch.delenv(artifacts.ARTIFACTS_ENV, raising=False)
    source = Path(artifacts.__file__).read_text()
    assert "parents[" not in source and "REPO_ROOT" not in source
    artifacts.load_artifact.cache_clear()
    try:
        art = artifacts.load_artifact("MorToken")
    finally:
        artifacts.load_artifact.cache_clear()
    assert art.abi == _artifact("MorToken")["abi"] and art.bytecode.startswith("0x")


def test_proxy_router_artifacts_overrides_the_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {"contractName": "MorToken", "abi": [], "bytecode": "6000"}
    (tmp_path / "MorToken.json").write_text(json.dumps(fake))
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path))
    artifacts.load_artifact.cache_clear()
    try:
        assert artifacts.artifacts_dir() == tmp_path
        assert artifacts.load_artifact("MorToken") == artifacts.Artifact("MorToken", [], "0x6000")
        with pytest.raises(FileNotFoundError, match=r"Marketplace\.json is missing; check "
                                                   r"PROXY_ROUTER_ARTIFACTS"):
            artifacts.load_artifact("Marketplace")
    finally:
        artifacts.load_artifact.cache_clear()
