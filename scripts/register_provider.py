#!/usr/bin/env python3
"""Register (or update) the wallet as a provider with a MOR stake and its MOR-RPC endpoint.

The work is ``proxy-router provider register``'s (``proxy_router.cli.market``), with
anvil defaults (dev account #1).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy_router.cli import market as commands
from proxy_router.dev.scripting import marketplace, mor, parser, run


def main() -> None:
    p = parser(__doc__ or "", key_index=1)
    p.add_argument("--endpoint", default="127.0.0.1:3333",
                   help="host:port of this provider's MOR-RPC listener (default: 127.0.0.1:3333)")
    p.add_argument("--stake", type=mor, default=None,
                   help="MOR to add to the stake (default: the contract's minimum for a new "
                        "provider, nothing for one already registered)")
    args = p.parse_args()

    async def body() -> None:
        market = await marketplace(args)
        try:
            change = await commands.register_provider(market, args.endpoint, args.stake)
        finally:
            await market.client.close()
        commands.report_provider(change)

    run(body)


if __name__ == "__main__":
    main()
