#!/usr/bin/env python3
"""Compile contracts/*.sol with the pinned solc and write ABI + bytecode artifacts.

contracts/morpheus/*.sol (the test double of the Morpheus-Lumerin marketplace and its
interface) is compiled in a second job of its own, so adding or changing it cannot move a
byte of the artifacts of our own contracts; its interface is written as an ABI-only artifact.

Uses a native ``solc`` of exactly SOLC_VERSION when one is installed (e.g. by
``solc-select install 0.8.28``), otherwise the npm ``solc`` package of the same
version (solcjs, run with node from ./node_modules). Both get the same standard-JSON
input, with every source inlined by repo-relative path and no metadata hash, so the
artifacts are byte-identical whichever compiler produced them.

The artifacts are package data of ``proxy_router.chain`` (read by
``proxy_router/chain/artifacts.py``), so they ship in the wheel.

    python scripts/compile.py            # write proxy_router/chain/build/*.json
    python scripts/compile.py --check    # exit 1 if the committed artifacts are stale
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SOLC_VERSION = "0.8.28"  # keep in sync with package.json devDependencies.solc

REPO = Path(__file__).resolve().parents[1]
CONTRACTS_DIR = "contracts"
MORPHEUS_DIR = "contracts/morpheus"  # the Morpheus-Lumerin test double (second job)
ABI_ONLY = ("IMorpheusDiamond",)  # interfaces written as artifacts (ABI, no bytecode)
ARTIFACTS_DIR = "proxy_router/chain/build"  # package data, see proxy_router/chain/artifacts.py
DEFAULT_OUT = REPO / ARTIFACTS_DIR
REMAPPINGS = ("@openzeppelin/=node_modules/@openzeppelin/",)

SETTINGS: dict[str, Any] = {
    "evmVersion": "cancun",
    "viaIR": True,
    # viaIR: the legacy pipeline hits "stack too deep" in openSession; runs 10000 vs 200 saves
    # ~300 gas per open/close for +3.6 KB of code (Marketplace stays ~19 KB, under EIP-170).
    "optimizer": {"enabled": True, "runs": 10000},
    "metadata": {"bytecodeHash": "none", "appendCBOR": False},
    "remappings": list(REMAPPINGS),
}
OUTPUT_SELECTION = {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}}

_IMPORT_RE = re.compile(r"""^\s*import\s+(?:[^;]*?\bfrom\s+)?["']([^"']+)["']""", re.MULTILINE)
_VERSION_RE = re.compile(r"(\d+\.\d+\.\d+)\+(commit\.[0-9a-f]+)")

_NODE_COMPILE = """
const solc = require(process.argv[1]);
const chunks = [];
process.stdin.on("data", (c) => chunks.push(c));
process.stdin.on("end", () => {
  const output = JSON.parse(solc.compile(Buffer.concat(chunks).toString()));
  process.stdout.write(JSON.stringify({ version: solc.version(), output }));
});
"""


class CompileError(Exception):
    """A failure with a one-line explanation for the user."""


# ---------------------------------------------------------------------------- sources


def _resolve_import(unit: str, path: str) -> str:
    if path.startswith(("./", "../")):
        return posixpath.normpath(posixpath.join(posixpath.dirname(unit), path))
    best = max(
        (r for r in REMAPPINGS if path.startswith(r.split("=", 1)[0])),
        key=lambda r: len(r.split("=", 1)[0]),
        default=None,
    )
    if best is None:
        return path
    prefix, target = best.split("=", 1)
    return target + path[len(prefix) :]


def collect_sources(repo: Path = REPO, contracts_dir: str = CONTRACTS_DIR) -> dict[str, str]:
    """The contracts in one folder plus everything they import, keyed by repo-relative source
    unit name."""
    roots = sorted(p.relative_to(repo).as_posix() for p in (repo / contracts_dir).glob("*.sol"))
    if not roots:
        raise CompileError(f"no .sol files in {repo / contracts_dir}")
    sources: dict[str, str] = {}
    pending = list(roots)
    while pending:
        unit = pending.pop()
        if unit in sources:
            continue
        file = repo / unit
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            hint = " (run `npm ci`)" if unit.startswith("node_modules/") else ""
            raise CompileError(f"source {unit} not found{hint}") from None
        sources[unit] = text
        pending.extend(_resolve_import(unit, imp) for imp in _IMPORT_RE.findall(text))
    return dict(sorted(sources.items()))


def standard_json_input(sources: dict[str, str]) -> dict[str, Any]:
    return {
        "language": "Solidity",
        "sources": {unit: {"content": text} for unit, text in sources.items()},
        "settings": {**SETTINGS, "outputSelection": OUTPUT_SELECTION},
    }


# ---------------------------------------------------------------------------- compilers


def _normalize_version(raw: str) -> str | None:
    """'0.8.28+commit.7893614a.Linux.g++' -> '0.8.28+commit.7893614a' (platform-independent)."""
    m = _VERSION_RE.search(raw)
    return f"{m.group(1)}+{m.group(2)}" if m else None


def _is_solc_select_shim(path: str) -> bool:
    """solc-select's `solc` wrapper tries to download a compiler (slow offline) if none is set."""
    try:
        with open(path, "rb") as f:
            return b"solc_select" in f.read(4096)
    except OSError:
        return False


def _native_candidates() -> list[str]:
    found: list[str] = []
    homes = [os.environ.get("VIRTUAL_ENV"), sys.prefix, str(Path.home())]
    for home in homes:
        if home:
            path = Path(
                home, ".solc-select", "artifacts", f"solc-{SOLC_VERSION}", f"solc-{SOLC_VERSION}"
            )
            if path.is_file() and os.access(path, os.X_OK):
                found.append(str(path))
    on_path = shutil.which("solc")
    if on_path and not _is_solc_select_shim(on_path):
        found.append(on_path)
    return list(dict.fromkeys(found))


def _native_version(binary: str) -> str | None:
    try:
        proc = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = _normalize_version(proc.stdout) if proc.returncode == 0 else None
    return version if version and version.startswith(SOLC_VERSION + "+") else None


def find_native_solc() -> tuple[str, str] | None:
    for binary in _native_candidates():
        version = _native_version(binary)
        if version:
            return binary, version
    return None


def compile_native(binary: str, std_input: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [binary, "--standard-json"],
        input=json.dumps(std_input),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise CompileError(f"{binary} --standard-json failed: {proc.stderr.strip()[:500]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def compile_solcjs(std_input: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        raise CompileError(f"no native solc {SOLC_VERSION} and no node for npm solc")
    module = REPO / "node_modules" / "solc"
    if not (module / "soljson.js").is_file():
        raise CompileError(f"npm solc not installed at {module} (run `npm ci`)")
    proc = subprocess.run(
        [node, "-e", _NODE_COMPILE, str(module)],
        input=json.dumps(std_input),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise CompileError(f"solcjs failed: {proc.stderr.strip()[:500]}")
    reply = json.loads(proc.stdout)
    version = _normalize_version(reply["version"])
    if not version or not version.startswith(SOLC_VERSION + "+"):
        raise CompileError(
            f"npm solc is {reply['version']}, expected {SOLC_VERSION} (package.json / npm ci)"
        )
    output: dict[str, Any] = reply["output"]
    return version, output


def run_compiler(std_input: dict[str, Any], compiler: str) -> tuple[str, dict[str, Any]]:
    """Returns (normalized version, standard-JSON output)."""
    if compiler in ("auto", "native"):
        native = find_native_solc()
        if native is not None:
            binary, version = native
            return version, compile_native(binary, std_input)
        if compiler == "native":
            raise CompileError(
                f"no native solc {SOLC_VERSION} found (try `solc-select install {SOLC_VERSION}`)"
            )
    return compile_solcjs(std_input)


# ---------------------------------------------------------------------------- artifacts


def build_artifacts(compiler: str = "auto") -> tuple[str, dict[str, str]]:
    """Compile and return (version, {file name: JSON text}) for our deployable contracts
    and the Morpheus double (two jobs, see the module docstring)."""
    version, files = _compile_folder(CONTRACTS_DIR, compiler)
    morpheus_version, morpheus_files = _compile_folder(MORPHEUS_DIR, compiler)
    if morpheus_version != version:  # the same binary compiles both: cannot happen
        raise CompileError(f"two solc versions: {version} and {morpheus_version}")
    clash = sorted(set(files) & set(morpheus_files))
    if clash:
        raise CompileError(f"artifact names in both {CONTRACTS_DIR} and {MORPHEUS_DIR}: {clash}")
    return version, {**files, **morpheus_files}


def _compile_folder(contracts_dir: str, compiler: str) -> tuple[str, dict[str, str]]:
    """One standard-JSON job for the .sol files of ``contracts_dir``."""
    sources = collect_sources(contracts_dir=contracts_dir)
    version, output = run_compiler(standard_json_input(sources), compiler)
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    for e in output.get("errors", []):
        where = e.get("sourceLocation", {}).get("file", "")
        if e in errors or not where.startswith("node_modules/"):  # dependency warnings are noise
            print(e.get("formattedMessage") or e.get("message"), file=sys.stderr)
    if errors:
        first = errors[0].get("message", "?")
        raise CompileError(f"solc {version} reported {len(errors)} error(s); first: {first}")

    settings = dict(SETTINGS)
    files: dict[str, str] = {}
    for unit, contracts in sorted(output.get("contracts", {}).items()):
        if posixpath.dirname(unit) != contracts_dir:
            continue  # dependencies (OpenZeppelin)
        for name, data in sorted(contracts.items()):
            bytecode = data["evm"]["bytecode"]["object"]
            if not bytecode and name not in ABI_ONLY:
                continue  # interfaces and abstract contracts
            artifact = {
                "contractName": name,
                "sourceName": unit,
                "abi": data["abi"],
                "bytecode": "0x" + bytecode,
                "deployedBytecode": "0x" + data["evm"]["deployedBytecode"]["object"],
                "compiler": {"version": version, "settings": settings},
            }
            files[f"{name}.json"] = json.dumps(artifact, indent=2, sort_keys=True) + "\n"
    return version, files


def _is_artifact(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "contractName" in data and "compiler" in data


def check(out: Path, files: dict[str, str]) -> list[str]:
    """Differences between `out` and a fresh build, as human-readable lines."""
    problems: list[str] = []
    for name, text in files.items():
        path = out / name
        if not path.is_file():
            problems.append(f"missing: {path}")
        elif path.read_text() != text:
            problems.append(f"differs: {path}")
    for path in sorted(out.glob("*.json")) if out.is_dir() else []:
        if path.name not in files and _is_artifact(path):
            problems.append(f"stale: {path}")
    return problems


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write(out: Path, files: dict[str, str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(out.glob("*.json")):
        if path.name not in files and _is_artifact(path):
            path.unlink()
    for name, text in files.items():
        path = out / name
        if not path.is_file() or path.read_text() != text:
            tmp = tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp")
            with tmp:
                tmp.write(text)
            os.chmod(tmp.name, 0o666 & ~_umask())  # mkstemp makes 0600 files
            os.replace(tmp.name, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"artifact directory (default: {ARTIFACTS_DIR})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the artifacts in --out differ from a fresh compile",
    )
    parser.add_argument(
        "--compiler",
        choices=("auto", "native", "solcjs"),
        default="auto",
        help=f"auto: native solc {SOLC_VERSION} if installed, else npm solc",
    )
    args = parser.parse_args(argv)
    try:
        version, files = build_artifacts(args.compiler)
    except CompileError as exc:
        print(f"compile.py: {exc}", file=sys.stderr)
        return 1
    if args.check:
        problems = check(args.out, files)
        for line in problems:
            print(f"compile.py: {line}", file=sys.stderr)
        if problems:
            print(
                "compile.py: artifacts are out of date; run `python scripts/compile.py`",
                file=sys.stderr,
            )
            return 1
        print(f"compile.py: {len(files)} artifacts in {args.out} match solc {version}")
        return 0
    write(args.out, files)
    print(f"compile.py: wrote {len(files)} artifacts to {args.out} (solc {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
