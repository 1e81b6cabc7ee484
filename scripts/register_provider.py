#!/usr/bin/env python3
"""Register (or top up) the wallet as a provider with a MOR stake and its MOR-RPC endpoint."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy_router.dev.scripting import fmt_mor, marketplace, mor, parser, run


def main() -> None:
    p = parser(__doc__ or "", key_index=1)
    p.add_argument("--endpoint", default="127.0.0.1:3333",
                   help="host:port of this provider's MOR-RPC listener (default: 127.0.0.1:3333)")
    p.add_argument("--stake", type=mor, default=None,
                   help="MOR to add to the stake (default: the contract's minimum)")
    args = p.parse_args()

    async def body() -> None:
        market = await marketplace(args)
        try:
            stake = args.stake if args.stake is not None else await market.param(
                "providerMinStake")
            tx = await market.register_provider(stake, args.endpoint)
            info = await market.get_provider(market.client.address)
        finally:
            await market.client.close()
        print(f"provider {market.client.address} registered at {info.endpoint}")
        print(f"stake {fmt_mor(info.stake)} (added {fmt_mor(stake)}), tx {tx.tx_hash}, "
              f"gas {tx.gas_used}")

    run(body)


if __name__ == "__main__":
    main()
