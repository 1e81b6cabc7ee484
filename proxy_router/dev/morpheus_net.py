"""A Morpheus-Lumerin marketplace on a local anvil: the real reference, or our double.

``reference`` deploys the reference's own contracts, compiled from a checkout of it
(``MORPHEUS_SRC``) by ``../shared/morpheus-ref`` (its ``build.sh`` and ``deploy.py``,
run as they are: nothing of the reference enters this repository). ``double`` deploys
our test double of the diamond's interface (``contracts/morpheus/``), which needs
nothing but our own artifacts: CI has no reference checkout. Both leave dev accounts
1–8 holding MOR and a funding account that pays stake-mode sessions.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from proxy_router.chain.client import ChainClient
from proxy_router.dev.anvil import dev_address, dev_key

Kind = Literal["double", "reference"]
REF_DIR_ENV = "MORPHEUS_REF_DIR"
DEFAULT_REF_DIR = Path(__file__).resolve().parents[3] / "shared" / "morpheus-ref"
DEV_MOR = 100_000 * 10**18  # what each dev account holds, as the reference's deploy.py gives
FUNDED = range(1, 9)


class ReferenceUnavailable(RuntimeError):
    """No reference checkout to compile (``MORPHEUS_SRC`` unset) or its scripts failed."""


@dataclass(frozen=True, slots=True)
class MorpheusNet:
    kind: Kind
    rpc_url: str
    chain_id: int
    diamond: str
    mor: str
    funding_account: str
    deploy_block: int


def reference_dir() -> Path:
    return Path(os.environ.get(REF_DIR_ENV) or DEFAULT_REF_DIR)


def reference_available() -> str | None:
    """Why the reference deployment cannot be made here, or None when it can."""
    if not os.environ.get("MORPHEUS_SRC"):
        return "MORPHEUS_SRC is not set (a checkout of MorpheusAIs/Morpheus-Lumerin-Node)"
    if not (reference_dir() / "deploy.py").is_file():
        return f"no morpheus-ref scripts in {reference_dir()} (set {REF_DIR_ENV})"
    return None


def deploy_reference(rpc_url: str, python: str = "python3") -> MorpheusNet:
    """Compile (cached) and deploy the reference's diamond on the anvil at ``rpc_url``."""
    problem = reference_available()
    if problem:
        raise ReferenceUnavailable(problem)
    scripts = reference_dir()
    env = {**os.environ, "PYTHON": python}
    for cmd in (["bash", str(scripts / "build.sh")],):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise ReferenceUnavailable(f"{cmd[-1]} failed: {done.stderr.strip()[-2000:]}")
    out = Path(tempfile.mkdtemp(prefix="morpheus-ref-")) / "deployment.json"
    done = subprocess.run([python, str(scripts / "deploy.py"), "--rpc", rpc_url,
                           "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    if done.returncode:
        raise ReferenceUnavailable(f"deploy.py failed: {done.stderr.strip()[-2000:]}")
    data = json.loads(out.read_text())
    return MorpheusNet("reference", rpc_url, int(data["chain_id"]), data["diamond"],
                       data["mor"], data["funding_account"]["address"],
                       int(data["deploy_block"]))


async def deploy_double(rpc_url: str) -> MorpheusNet:
    """Our double of the diamond, with the reference's base-mainnet settings."""
    from proxy_router.dev.morpheus_double import deploy_morpheus_double

    client = await ChainClient.connect(rpc_url, dev_key(0))
    try:
        dep = await deploy_morpheus_double(client, fund=[dev_address(i) for i in FUNDED],
                                           fund_amount=DEV_MOR)
    finally:
        await client.close()
    return MorpheusNet("double", rpc_url, dep.chain_id, dep.diamond, dep.mor,
                       dep.funding_account, dep.deploy_block)


async def deploy(kind: Kind, rpc_url: str) -> MorpheusNet:
    """A diamond of ``kind`` on the anvil at ``rpc_url`` (the reference's scripts run with
    this interpreter, which has web3)."""
    if kind == "reference":
        return await asyncio.to_thread(deploy_reference, rpc_url, sys.executable)
    return await deploy_double(rpc_url)
