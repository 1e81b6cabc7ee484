#!/usr/bin/env python3
"""Post (or replace) the provider's bid for a model at a price in MOR wei per second.

The work is ``proxy-router bid post``'s (``proxy_router.cli.market``), with anvil
defaults (dev account #1, the model it registered under --name).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eth_utils import keccak

from proxy_router.cli import market as commands
from proxy_router.dev.scripting import marketplace, parser, run

DEFAULT_PRICE = 10**14  # 0.0001 MOR/s: a 10-minute session escrows 0.06 MOR


def main() -> None:
    p = parser(__doc__ or "", key_index=1)
    p.add_argument("--model-id", default=None,
                   help="0x model id (default: the model this wallet registered under --name)")
    p.add_argument("--name", default="SmolLM2-135M-Instruct",
                   help="model name used to derive the id when --model-id is not given")
    p.add_argument("--price", type=int, default=DEFAULT_PRICE,
                   help=f"price in MOR wei per second (default: {DEFAULT_PRICE})")
    args = p.parse_args()

    async def body() -> None:
        market = await marketplace(args)
        try:
            model_id = args.model_id or "0x" + keccak(
                bytes.fromhex(market.client.address[2:]) + keccak(text=args.name)).hex()
            model = await commands.registered_model(market, model_id.lower())
            posting = await commands.post_bid(market, model, args.price)
        finally:
            await market.client.close()
        commands.report_bid(posting)

    run(body)


if __name__ == "__main__":
    main()
