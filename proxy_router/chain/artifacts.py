"""Compiled contract artifacts (ABI + bytecode) produced by ``scripts/compile.py``.

The artifacts are committed inside the package, in ``proxy_router/chain/build/``, and
are read as package data, so an installed wheel needs neither the repository nor a
Solidity compiler. ``PROXY_ROUTER_ARTIFACTS`` names another folder to read them from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from eth_utils import function_abi_to_4byte_selector, keccak

ARTIFACTS_ENV = "PROXY_ROUTER_ARTIFACTS"
PACKAGE_DIR = "build"  # inside the ``proxy_router.chain`` package


def artifacts_dir() -> Traversable:
    """Where artifacts are read: ``$PROXY_ROUTER_ARTIFACTS``, else the package's own."""
    override = os.environ.get(ARTIFACTS_ENV)
    if override:
        return Path(override)
    return files("proxy_router.chain").joinpath(PACKAGE_DIR)


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


@cache
def load_artifact(name: str) -> Artifact:
    path = artifacts_dir() / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        hint = (f"check {ARTIFACTS_ENV}" if os.environ.get(ARTIFACTS_ENV)
                else "reinstall proxy-router, or in a checkout run `python scripts/compile.py`")
        raise FileNotFoundError(f"contract artifact {path} is missing; {hint}") from exc
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
    """Map 4-byte selectors to custom errors declared in the named artifacts.

    Where two artifacts declare the same error (e.g. ``OwnableUnauthorizedAccount`` with
    ``account`` in ours and ``account_`` in the Morpheus interface), the first named wins,
    so adding an artifact at the end never renames another's error arguments."""
    out: dict[bytes, ErrorAbi] = {}
    for name in names:
        for item in load_artifact(name).abi:
            if item.get("type") != "error":
                continue
            selector = function_abi_to_4byte_selector(item)  # type: ignore[arg-type]
            if selector in out:
                continue
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
