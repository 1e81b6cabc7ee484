"""Our IMorpheusDiamond is the reference LumerinDiamond's interface, selector for selector.

The reference build (``$MORPHEUS_REF_BUILD``, default ``~/.cache/morpheus-ref/build``, made by
``../shared/morpheus-ref/build.sh``) is not in the repository; without it the comparison is
skipped and only the checks on our own artifacts run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "proxy_router" / "chain" / "build"
REFERENCE_BUILD = Path(os.environ.get("MORPHEUS_REF_BUILD",
                                      Path.home() / ".cache" / "morpheus-ref" / "build"))
REFERENCE_ARTIFACTS = REFERENCE_BUILD / "artifacts" / "contracts"

# What the diamond routes: the facet interfaces it cuts, and the diamond's own functions.
CALLABLE = ("interfaces/facets/*.sol/*.json", "interfaces/storage/*.sol/*.json",
            "interfaces/utils/*.sol/*.json", "diamond/LumerinDiamond.sol/LumerinDiamond.json")
# Where events and errors are declared: the same, plus the facets and presets.
DECLARING = (*CALLABLE, "diamond/facets/*.sol/*.json", "diamond/presets/*.sol/*.json")

# Callable on the reference, deliberately not on the double (see IMorpheusDiamond.sol).
OMITTED = {
    "__LumerinDiamond_init()", "__ProviderRegistry_init()", "__ModelRegistry_init()",
    "__Marketplace_init(address,uint256,uint256)",
    "__SessionRouter_init(address,uint128,(uint256,uint256,uint128,uint128)[])",
    "__Delegation_init(address)", "setRegistry(address)",
    "getPools()", "getPool(uint256)", "setPoolConfig(uint256,(uint256,uint256,uint128,uint128))",
    "diamondCut((address,uint8,bytes4[])[])",
    "diamondCut((address,uint8,bytes4[])[],address,bytes)",
    "facets()", "facetAddress(bytes4)", "facetAddresses()", "facetFunctionSelectors(address)",
    "DIAMOND_OWNABLE_STORAGE_SLOT()", "DIAMOND_STORAGE_SLOT()",
}
# Functions of the double that the reference lacks: its test hooks, all named double*.
TEST_HOOKS = {"doubleSetFundingAccount(address)", "doubleSetEmission(uint256,uint256)",
              "doubleEmission()"}

# What the brief and the morpheus flavour rely on, by signature.
REQUIRED_FUNCTIONS = {
    "providerRegister(address,uint256,string)", "providerDeregister(address)",
    "getProvider(address)", "getActiveProviders(uint256,uint256)",
    "getIsProviderActive(address)", "getProviderMinimumStake()",
    "modelRegister(address,bytes32,bytes32,uint256,uint256,string,string[])",
    "modelDeregister(bytes32)", "getModel(bytes32)", "getModelId(address,bytes32)",
    "getModelIds(uint256,uint256)", "getActiveModelIds(uint256,uint256)",
    "getIsModelActive(bytes32)", "getModelMinimumStake()",
    "postModelBid(address,bytes32,uint256)", "deleteModelBid(bytes32)", "getBid(bytes32)",
    "getBidId(address,bytes32,uint256)", "getProviderModelId(address,bytes32)",
    "isBidActive(bytes32)", "getProviderBids(address,uint256,uint256)",
    "getProviderActiveBids(address,uint256,uint256)", "getModelBids(bytes32,uint256,uint256)",
    "getModelActiveBids(bytes32,uint256,uint256)", "getBidFee()", "getFeeBalance()",
    "getMinMaxBidPricePerSecond()", "getToken()",
    "openSession(address,uint256,bool,bytes,bytes)", "closeSession(bytes,bytes)",
    "claimForProvider(bytes32)", "getSession(bytes32)",
    "getSessionId(address,address,bytes32,uint256)", "getSessionEnd(uint256,uint256,uint128)",
    "stakeToStipend(uint256,uint128)", "stipendToStake(uint256,uint128)",
    "getTodaysBudget(uint128)", "getComputeBalance(uint128)", "totalMORSupply(uint128)",
    "startOfTheDay(uint128)", "getUserStakesOnHold(address,uint8)",
    "withdrawUserStakes(address,uint8)", "getUserSessions(address,uint256,uint256)",
    "getProviderSessions(address,uint256,uint256)", "getModelSessions(bytes32,uint256,uint256)",
    "getTotalSessions(address)", "getIsProviderApprovalUsed(bytes)", "getFundingAccount()",
    "getProvidersTotalClaimed()", "getMaxSessionDuration()",
    "getProviderModelStats(bytes32,address)", "getModelStats(bytes32)",
}
REQUIRED_EVENTS = {
    "ProviderRegistered(address)", "ProviderDeregistered(address)",
    "ModelRegisteredUpdated(address,bytes32)", "ModelDeregistered(address,bytes32)",
    "MarketplaceBidPosted(address,bytes32,uint256)",
    "MarketplaceBidDeleted(address,bytes32,uint256)",
    "SessionOpened(address,bytes32,address)", "SessionClosed(address,bytes32,address)",
    "UserWithdrawn(address,uint256)",
}
REQUIRED_ERRORS = {
    "SessionApproveExpired()", "SessionReceiptExpired()", "SessionApprovedForAnotherChainId()",
    "SessionReceiptForAnotherChainId()", "SessionProviderSignatureMismatch()",
    "SessionDuplicateApproval()", "SessionTooShort()", "SessionAlreadyClosed()",
    "SessionBidNotFound()", "SessionUserAmountToWithdrawIsZero()",
    "InsufficientRightsForOperation(address,address)", "ProviderStakeTooLow(uint256,uint256)",
    "ProviderHasActiveBids()", "ProviderNotFound()", "ProviderHasAlreadyDeregistered()",
    "ModelStakeTooLow(uint256,uint256)", "ModelHasActiveBids()", "ModelHasAlreadyDeregistered()",
    "MarketplaceProviderNotFound()", "MarketplaceModelNotFound()",
    "MarketplaceActiveBidNotFound()", "MarketplaceBidPricePerSecondInvalid()",
}


def _canonical(param: dict[str, Any]) -> str:
    typ: str = param["type"]
    if typ.startswith("tuple"):
        return "(" + ",".join(_canonical(c) for c in param["components"]) + ")" + typ[5:]
    return typ


def _signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(_canonical(i) for i in item['inputs'])})"


def _shape(param: dict[str, Any], *, named: bool) -> Any:
    """A parameter without solc's internalType: type, struct field names, indexed flag."""
    shape: dict[str, Any] = {"type": param["type"]}
    if named:
        shape["name"] = param["name"]
    if "indexed" in param:
        shape["indexed"] = param["indexed"]
    if "components" in param:
        shape["components"] = [_shape(c, named=True) for c in param["components"]]
    return shape


def _abi(name: str) -> list[dict[str, Any]]:
    abi: list[dict[str, Any]] = json.loads((BUILD / f"{name}.json").read_text())["abi"]
    return abi


def _by_signature(abi: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {_signature(item): item for item in abi if item["type"] == kind}


def _reference(patterns: tuple[str, ...], kind: str) -> dict[str, list[dict[str, Any]]]:
    """Every declaration of each signature (interfaces and facets may differ, e.g. view/pure)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for pattern in patterns:
        for path in sorted(REFERENCE_ARTIFACTS.glob(pattern)):
            for item in json.loads(path.read_text())["abi"]:
                if item["type"] == kind:
                    found.setdefault(_signature(item), []).append(item)
    return found


needs_reference = pytest.mark.skipif(
    not REFERENCE_ARTIFACTS.is_dir(),
    reason=f"no reference build at {REFERENCE_BUILD} (../shared/morpheus-ref/build.sh makes it); "
           "set MORPHEUS_REF_BUILD to compare against one elsewhere",
)


# ------------------------------------------------------------------ our artifacts, always


def test_the_interface_declares_what_the_flavour_needs() -> None:
    abi = _abi("IMorpheusDiamond")
    assert REQUIRED_FUNCTIONS <= set(_by_signature(abi, "function"))
    assert REQUIRED_EVENTS <= set(_by_signature(abi, "event"))
    assert REQUIRED_ERRORS <= set(_by_signature(abi, "error"))


def test_the_double_implements_the_interface_plus_only_named_test_hooks() -> None:
    interface, double = _abi("IMorpheusDiamond"), _abi("MorpheusDiamondDouble")
    for kind in ("event", "error"):
        assert set(_by_signature(interface, kind)) <= set(_by_signature(double, kind))
    functions = set(_by_signature(double, "function"))
    assert functions - set(_by_signature(interface, "function")) == TEST_HOOKS
    assert all(hook.startswith("double") for hook in TEST_HOOKS)


def test_output_shapes_are_the_references() -> None:
    """The shapes the flavour decodes (written down here, so they hold without the reference)."""
    functions = _by_signature(_abi("IMorpheusDiamond"), "function")

    def outputs(signature: str) -> list[str]:
        return [_canonical(o) for o in functions[signature]["outputs"]]

    assert outputs("getProvider(address)") == ["(string,uint256,uint128,uint128,uint256,bool)"]
    assert [c["name"] for c in functions["getProvider(address)"]["outputs"][0]["components"]] == [
        "endpoint", "stake", "createdAt", "limitPeriodEnd", "limitPeriodEarned", "isDeleted"]
    assert outputs("getProviderModelStats(bytes32,address)") == [
        "((int64,int64),(int64,int64),uint32,uint32,uint32)"]
    assert outputs("getUserStakesOnHold(address,uint8)") == ["uint256", "uint256"]
    assert [o["name"] for o in functions["getUserStakesOnHold(address,uint8)"]["outputs"]] == [
        "available_", "hold_"]
    assert outputs("getSession(bytes32)") == [
        "(address,bytes32,uint256,bytes,uint256,uint256,uint128,uint128,uint128,bool,bool)"]
    assert outputs("postModelBid(address,bytes32,uint256)") == ["bytes32"]
    assert outputs("getActiveProviders(uint256,uint256)") == ["address[]", "uint256"]


# ------------------------------------------------------------------ against the reference build


@needs_reference
def test_every_function_is_callable_on_the_reference_diamond_with_the_same_shape() -> None:
    reference = _reference(CALLABLE, "function")
    declared = _reference(DECLARING, "function")
    ours = _by_signature(_abi("IMorpheusDiamond"), "function")
    for signature, item in ours.items():
        assert signature in reference, f"{signature} is not routed by the reference diamond"
        selector = keccak(text=signature)[:4]
        assert selector == keccak(text=_signature(reference[signature][0]))[:4]
        # Output types and struct field names as the reference declares them.
        want = [_shape(o, named=False) for o in reference[signature][0]["outputs"]]
        assert [_shape(o, named=False) for o in item["outputs"]] == want, signature
        mutabilities = {r["stateMutability"] for r in reference[signature]}
        assert item["stateMutability"] in mutabilities, signature
        # Parameter names as one of its declarations (interface or facet) has them.
        names = [[i["name"] for i in r["inputs"]] for r in declared[signature]]
        assert [i["name"] for i in item["inputs"]] in names, signature


@needs_reference
def test_only_the_documented_functions_are_left_out() -> None:
    ours = set(_by_signature(_abi("IMorpheusDiamond"), "function"))
    assert set(_reference(CALLABLE, "function")) - ours == OMITTED


@needs_reference
def test_every_event_has_the_references_topic_indexed_flags_and_names() -> None:
    reference = _reference(DECLARING, "event")
    for signature, item in _by_signature(_abi("IMorpheusDiamond"), "event").items():
        assert signature in reference, f"event {signature} is not the reference's"
        assert keccak(text=signature) == keccak(text=_signature(reference[signature][0]))
        assert [_shape(i, named=True) for i in item["inputs"]] == [
            _shape(i, named=True) for i in reference[signature][0]["inputs"]], signature


@needs_reference
def test_every_error_has_the_references_selector_and_argument_names() -> None:
    reference = _reference(DECLARING, "error")
    ours = _by_signature(_abi("IMorpheusDiamond"), "error")
    for signature, item in ours.items():
        assert signature in reference, f"error {signature} is not the reference's"
        assert keccak(text=signature)[:4] == keccak(text=_signature(reference[signature][0]))[:4]
        assert [_shape(i, named=True) for i in item["inputs"]] == [
            _shape(i, named=True) for i in reference[signature][0]["inputs"]], signature
    # Every error a facet of the diamond declares is declared here too, so reverts decode alike.
    facets = _reference(("interfaces/facets/*.sol/*.json", "interfaces/storage/*.sol/*.json",
                         "diamond/presets/*.sol/*.json"), "error")
    assert set(facets) <= set(ours)
