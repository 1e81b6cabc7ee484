"""What only the ``scripts/`` need: anvil defaults for the operator CLI's functions.

The scripts do their work through ``proxy_router.cli`` (the same code as
``proxy-router deploy``, ``provider register``...); this module adds the flags they
have always had: ``--rpc-url`` (default a fresh ``npx anvil`` on port 8545),
``--key-env`` (default an anvil dev key) and ``--deployment`` (the file
``scripts/deploy.py`` writes).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from proxy_router.chain.client import ChainClient
from proxy_router.chain.deploy import Deployment
from proxy_router.chain.marketplace import Marketplace
from proxy_router.cli.context import CliError, run_async
from proxy_router.cli.units import fmt_mor, mor_arg
from proxy_router.dev.anvil import dev_key

__all__ = ["DEFAULT_DEPLOYMENT", "DEFAULT_RPC", "ScriptError", "connect", "fmt_mor",
           "load_deployment", "marketplace", "mor", "parser", "run", "wallet_key"]

DEFAULT_RPC = "http://127.0.0.1:8545"
DEFAULT_DEPLOYMENT = Path(".devnet/deployment.json")

ScriptError = CliError
mor = mor_arg  # argparse type: a decimal MOR amount, as wei


def parser(description: str, *, key_index: int, needs_deployment: bool = True
           ) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rpc-url", default=os.environ.get("ETH_NODE_ADDRESS", DEFAULT_RPC),
                   help="JSON-RPC URL(s), comma-separated (default: $ETH_NODE_ADDRESS or "
                        f"{DEFAULT_RPC})")
    p.add_argument("--key-env", default="WALLET_PRIVATE_KEY", metavar="VAR",
                   help="environment variable holding the wallet key (default: "
                        f"WALLET_PRIVATE_KEY; unset = anvil dev account #{key_index})")
    if needs_deployment:
        p.add_argument("--deployment", type=Path, default=DEFAULT_DEPLOYMENT,
                       help=f"deployment file written by deploy.py (default: {DEFAULT_DEPLOYMENT})")
    p.set_defaults(key_index=key_index)
    return p


def wallet_key(args: argparse.Namespace) -> str:
    return os.environ.get(args.key_env) or dev_key(args.key_index)


def load_deployment(args: argparse.Namespace) -> Deployment:
    try:
        return Deployment.load(args.deployment)
    except FileNotFoundError:
        raise ScriptError(f"no deployment file at {args.deployment}; run scripts/deploy.py "
                          "first") from None


async def connect(args: argparse.Namespace) -> ChainClient:
    return await ChainClient.connect(args.rpc_url, wallet_key(args), timeout=10)


async def marketplace(args: argparse.Namespace) -> Marketplace:
    dep = load_deployment(args)
    client = await connect(args)
    if client.chain_id != dep.chain_id:
        await client.close()
        raise ScriptError(f"{args.deployment} is for chain {dep.chain_id}, the RPC is chain "
                          f"{client.chain_id}")
    return Marketplace(client, dep.marketplace_address, dep.mor_token_address)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an async script body; failures are one line (as the CLI's) and exit code 1."""
    sys.exit(run_async(main()))
