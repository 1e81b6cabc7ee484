"""``proxy-router deploy``: MorToken + Marketplace from the wallet, on a local or test chain."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from proxy_router.chain.client import ChainClient
from proxy_router.chain.deploy import DEFAULT_FUNDING, Deployment, deploy_all
from proxy_router.cli.args import Commands, Parser, address_arg
from proxy_router.cli.context import EXIT_CONFIG, CliError, Context
from proxy_router.cli.units import fmt_mor, mor_arg
from proxy_router.networks import NETWORKS

DEFAULT_DEPLOYMENT_FILE = Path("deployment.json")
MAINNETS = {n.name: n.chain_id for n in NETWORKS.values()
            if n.public and not n.name.endswith("-sepolia")}
"""Networks where MOR has real value: a deploy there needs ``--yes-mainnet``."""


def add_commands(sub: Commands, common: Parser) -> None:
    p = sub.add_parser(
        "deploy", parents=[common], help="deploy MorToken + Marketplace (local or test chain)",
        description="Deploy MorToken and Marketplace (the native flavour) from the "
                    "configured wallet, send MOR to --fund accounts, and write the deployment "
                    "file the routers read (DEPLOYMENT_FILE). Refused on a mainnet unless "
                    "--yes-mainnet, and in the morpheus flavour (the diamond is deployed by "
                    "its own project).")
    p.add_argument("--fee-recipient", type=address_arg, default=None, metavar="ADDR",
                   help="address that receives bid fees (default: the deployer)")
    p.add_argument("--fund", type=address_arg, nargs="+", action="extend", default=[],
                   metavar="ADDR", help="send MOR to these addresses after the deploy")
    p.add_argument("--fund-amount", type=mor_arg, default=DEFAULT_FUNDING, metavar="MOR",
                   help=f"MOR per funded address (default: {fmt_mor(DEFAULT_FUNDING)})")
    p.add_argument("--deployment-file", type=Path, default=None, metavar="PATH",
                   help=f"where to write the addresses (default: DEPLOYMENT_FILE, else "
                        f"./{DEFAULT_DEPLOYMENT_FILE})")
    p.add_argument("--yes-mainnet", action="store_true",
                   help="deploy even though NETWORK (or the chain id) is a mainnet")
    p.set_defaults(handler=deploy_command)


async def deploy_command(ctx: Context) -> None:
    args = ctx.args
    network = ctx.settings.network
    if network in MAINNETS and not args.yes_mainnet:
        raise CliError(f"NETWORK is {network}, a mainnet: add --yes-mainnet to deploy there",
                       EXIT_CONFIG)
    if ctx.settings.marketplace_flavor != "native":
        raise CliError("deploy deploys our Marketplace (the native flavour), but "
                       "MARKETPLACE_FLAVOR is morpheus: the diamond is deployed by its own "
                       "project; set MARKETPLACE_FLAVOR=native to deploy ours", EXIT_CONFIG)
    path: Path = (args.deployment_file or ctx.settings.deployment_file
                  or DEFAULT_DEPLOYMENT_FILE)
    client = await ctx.client(sign=True)
    mainnet = next((n for n, cid in MAINNETS.items() if cid == client.chain_id), None)
    if mainnet is not None and not args.yes_mainnet:
        raise CliError(f"chain {client.chain_id} is {mainnet}, a mainnet: add --yes-mainnet "
                       "to deploy there", EXIT_CONFIG)
    fund = list(dict.fromkeys(args.fund))  # each address once
    print(f"deploying from {client.address} on chain {client.chain_id} ...")
    dep = await deploy(client, path, fee_recipient=args.fee_recipient, fund=fund,
                       fund_amount=args.fund_amount)
    report(dep, path, fund=fund, fund_amount=args.fund_amount)


async def deploy(client: ChainClient, path: Path, *, fee_recipient: str | None,
                 fund: Sequence[str], fund_amount: int) -> Deployment:
    """Deploy both contracts, fund ``fund``, write ``path``: shared with scripts/deploy.py."""
    dep = await deploy_all(client, fee_recipient=fee_recipient, fund=fund,
                           fund_amount=fund_amount)
    dep.save(path)
    return dep


def report(dep: Deployment, path: Path, *, fund: Sequence[str], fund_amount: int) -> None:
    funded = len({a.lower() for a in fund} - {dep.deployer.lower()})
    print(f"MorToken     {dep.mor_token_address}")
    print(f"Marketplace  {dep.marketplace_address}  (fees to {dep.fee_recipient})")
    if funded:
        print(f"funded {funded} account{'s' if funded != 1 else ''} with "
              f"{fmt_mor(fund_amount)} each")
    print(f"wrote {path}; environment for the routers:")
    for line in env_lines(dep, path):
        print(line)


def env_lines(dep: Deployment, path: Path) -> list[str]:
    return [*dep.env_lines(), f"ETH_NODE_START_BLOCK={dep.block_number}",
            f"DEPLOYMENT_FILE={path.absolute()}"]
