"""The package's layers, pinned: what each part of ``proxy_router`` may import.

The contract and wire layers (``chain``, ``morrpc``, ``store``) never know the roles;
the roles never know each other; dev tooling (``proxy_router.dev``) ships in the
package but nothing at run time imports it. Read statically (every ``import``,
including those inside functions), and checked once more by importing the runtime
in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "proxy_router"

# Small modules every layer may use.
BASE = {"__version__", "bounded_json", "redact", "ports", "periodic", "ratelimit", "logs",
        "config", "netguard", "process", "keystore", "networks", "dualport"}
ALLOWED: dict[str, set[str]] = {
    "store": set(),
    "morrpc": set(),
    "chain": {"store"},
    "metrics": {"chain"},
    "health": {"chain"},
    "consumer": {"chain", "morrpc", "store", "metrics", "health"},
    "provider": {"chain", "morrpc", "store", "metrics", "health"},
    "runtime": {"chain", "morrpc", "store", "metrics", "health", "consumer", "provider"},
    "cli": {"runtime", "chain", "store", "consumer", "morrpc"},
}


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def imported_layers(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "proxy_router" and len(parts) > 1:
                found.add(parts[1])
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"
                  or p.parent != PACKAGE)


def test_every_module_belongs_to_a_known_layer():
    unknown = {layer_of(p) for p in modules()} - set(ALLOWED) - BASE - {"dev"}
    assert not unknown, f"add these to the layer table: {sorted(unknown)}"


@pytest.mark.parametrize("path", [p for p in modules() if layer_of(p) != "dev"],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_runtime_module_imports_only_the_layers_below_it(path: Path):
    layer = layer_of(path)
    allowed = ALLOWED.get(layer, set()) | BASE | {layer}
    if layer in BASE:  # the small modules use each other, nothing above them
        allowed = BASE
    assert not (imported_layers(path) - allowed), (
        f"{path.relative_to(PACKAGE)} ({layer}) imports "
        f"{sorted(imported_layers(path) - allowed)}")


def test_the_runtime_never_loads_dev_tooling():
    code = ("import sys, proxy_router.cli, proxy_router.runtime, proxy_router.consumer.api, "
            "proxy_router.provider.service; "
            "print(sorted(m for m in sys.modules if m.startswith('proxy_router.dev')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[]"
