"""Run operations through the npm package ecies-geth (an independent geth-ECIES port)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("ecies_geth.js")


def require_ecies_geth() -> None:
    """Skip without node; fail (not skip) when the pinned dev dependency is missing."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (ROOT / "node_modules" / "ecies-geth").is_dir():
        pytest.fail("node_modules/ecies-geth is missing: run `make setup` (npm install)")


def run(ops: list[dict[str, str]]) -> list[Any]:
    """Each op's hex result (or ``{"error": text}``), computed by ecies-geth."""
    require_ecies_geth()
    out = subprocess.run(["node", str(SCRIPT)], input=json.dumps(ops), capture_output=True,
                         text=True, check=True, timeout=60, cwd=ROOT)
    results: list[Any] = json.loads(out.stdout)
    return results
