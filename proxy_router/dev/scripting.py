"""What every script in ``scripts/`` shares: arguments, units, one-line errors.

Defaults target a fresh ``npx anvil`` (port 8545, its public dev keys) and the
deployment file ``scripts/deploy.py`` writes, so the scripts run with no flags.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from proxy_router.chain.client import ChainClient
from proxy_router.chain.deploy import Deployment
from proxy_router.chain.errors import ChainError, ChainUnavailable, ContractReverted
from proxy_router.chain.marketplace import Marketplace
from proxy_router.dev.anvil import dev_key

DEFAULT_RPC = "http://127.0.0.1:8545"
DEFAULT_DEPLOYMENT = Path(".devnet/deployment.json")
MOR = 10**18


class ScriptError(Exception):
    """A problem worth one line to the user, not a traceback."""


def mor(text: str) -> int:
    """Parse a MOR amount ("0.2", "10") into wei."""
    try:
        value = Decimal(text) * MOR
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a MOR amount: {text!r}") from None
    if value < 0 or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"not a MOR amount with at most 18 decimals: {text!r}")
    return int(value)


def fmt_mor(wei: int) -> str:
    text = f"{Decimal(wei) / MOR:f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + " MOR"


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
    """Run an async script body; chain trouble becomes one line and exit code 1."""
    try:
        asyncio.run(main())
    except ChainUnavailable as exc:
        sys.exit(f"error: cannot reach the chain: {exc}")
    except ContractReverted as exc:
        sys.exit(f"error: transaction reverted: {exc.reason}")
    except (ChainError, ScriptError) as exc:
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)
