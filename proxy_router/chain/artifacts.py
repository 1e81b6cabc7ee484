"""Compiled contract artifacts (ABI + bytecode) produced by ``scripts/compile.py``.

The artifacts are committed under ``contracts/build/`` so routers never need a
Solidity compiler at run time; ``PROXY_ROUTER_ARTIFACTS`` overrides the folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_utils import function_abi_to_4byte_selector, keccak

REPO_ROOT = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    return Path(os.environ.get("PROXY_ROUTER_ARTIFACTS", REPO_ROOT / "contracts" / "build"))


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


@cache
def load_artifact(name: str) -> Artifact:
    path = artifacts_dir() / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"contract artifact {path} is missing; run `python scripts/compile.py`"
        ) from exc
    bytecode = data["bytecode"]
    if not bytecode.startswith("0x"):
        bytecode = "0x" + bytecode
    return Artifact(name=name, abi=data["abi"], bytecode=bytecode)


def _signature(item: dict[str, Any]) -> str:
    types = ",".join(_canonical_type(i) for i in item.get("inputs", []))
    return f"{item['name']}({types})"


def _canonical_type(param: dict[str, Any]) -> str:
    typ: str = param["type"]
    if typ.startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in param["components"])
        return f"({inner}){typ[5:]}"
    return typ


@dataclass(frozen=True)
class ErrorAbi:
    name: str
    input_names: list[str]
    input_types: list[str]


@cache
def error_selectors(*names: str) -> dict[bytes, ErrorAbi]:
    """Map 4-byte selectors to custom errors declared in the named artifacts."""
    out: dict[bytes, ErrorAbi] = {}
    for name in names:
        for item in load_artifact(name).abi:
            if item.get("type") != "error":
                continue
            selector = function_abi_to_4byte_selector(item)  # type: ignore[arg-type]
            out[selector] = ErrorAbi(
                name=item["name"],
                input_names=[i.get("name") or f"arg{n}" for n, i in enumerate(item["inputs"])],
                input_types=[_canonical_type(i) for i in item["inputs"]],
            )
    return out


@cache
def event_topics(name: str) -> dict[bytes, str]:
    """Map topic0 to event name for one artifact."""
    return {
        keccak(text=_signature(item)): item["name"]
        for item in load_artifact(name).abi
        if item.get("type") == "event"
    }
