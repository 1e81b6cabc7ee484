#!/usr/bin/env python3
"""Deploy MorToken + Marketplace to a local chain and fund anvil's dev accounts with MOR.

The work is ``proxy-router deploy``'s (``proxy_router.cli.deploy``); this script adds
anvil defaults: dev account #0 deploys, dev accounts 1..N-1 are funded.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy_router.chain.deploy import DEFAULT_FUNDING
from proxy_router.cli import deploy
from proxy_router.dev.anvil import dev_address
from proxy_router.dev.scripting import DEFAULT_DEPLOYMENT, connect, fmt_mor, mor, parser, run


def main() -> None:
    p = parser(__doc__ or "", key_index=0, needs_deployment=False)
    p.add_argument("--out", type=Path, default=DEFAULT_DEPLOYMENT,
                   help=f"where to write the addresses (default: {DEFAULT_DEPLOYMENT})")
    p.add_argument("--fund", type=int, default=10, metavar="N",
                   help="send MOR to anvil dev accounts 1..N-1 (default: 10 accounts)")
    p.add_argument("--fund-amount", type=mor, default=DEFAULT_FUNDING,
                   help=f"MOR per funded account (default: {fmt_mor(DEFAULT_FUNDING)})")
    p.add_argument("--fee-recipient", default=None,
                   help="address that receives bid fees (default: the deployer)")
    args = p.parse_args()

    async def body() -> None:
        client = await connect(args)
        fund = [dev_address(i) for i in range(1, args.fund)]
        try:
            print(f"deploying from {client.address} on chain {client.chain_id} ...")
            dep = await deploy.deploy(client, args.out, fee_recipient=args.fee_recipient,
                                      fund=fund, fund_amount=args.fund_amount)
        finally:
            await client.close()
        print(f"ETH_NODE_ADDRESS={args.rpc_url}")
        deploy.report(dep, args.out, fund=fund, fund_amount=args.fund_amount)

    run(body)


if __name__ == "__main__":
    main()
