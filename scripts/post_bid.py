#!/usr/bin/env python3
"""Post (or replace) the provider's bid for a model at a price in MOR wei per second."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eth_utils import keccak

from proxy_router.dev.scripting import ScriptError, fmt_mor, marketplace, parser, run

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
            model = await market.get_model(model_id)
            if not model.created_at:
                raise ScriptError(f"model {model_id} is not registered; run register_model.py")
            bid_id, tx = await market.post_bid(model_id, args.price)
            bid = await market.get_bid(bid_id)
        finally:
            await market.client.close()
        print(f"bid {bid_id} active for model {model.name!r} ({model_id})")
        print(f"price {bid.price_per_second} wei/s = {fmt_mor(bid.price_per_second * 3600)}"
              f" per hour, tx {tx.tx_hash}, gas {tx.gas_used}")

    run(body)


if __name__ == "__main__":
    main()
