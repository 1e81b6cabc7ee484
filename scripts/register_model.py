#!/usr/bin/env python3
"""Register a model on the marketplace (id = keccak256(owner, baseModelId))."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eth_utils import keccak

from proxy_router.chain.marketplace import to_bytes32
from proxy_router.dev.scripting import fmt_mor, marketplace, mor, parser, run

DEFAULT_NAME = "SmolLM2-135M-Instruct"


def main() -> None:
    p = parser(__doc__ or "", key_index=1)
    p.add_argument("--name", default=DEFAULT_NAME, help=f"model name (default: {DEFAULT_NAME})")
    p.add_argument("--base-model-id", default=None,
                   help="0x 32-byte base id (default: keccak256 of the name)")
    p.add_argument("--ipfs-cid", default="0x" + "00" * 32, help="0x 32-byte IPFS CID digest")
    p.add_argument("--tags", default="llm,gguf", help="comma-separated tags (default: llm,gguf)")
    p.add_argument("--stake", type=mor, default=None,
                   help="MOR stake (default: the contract's minimum)")
    args = p.parse_args()

    async def body() -> None:
        base = to_bytes32(args.base_model_id) if args.base_model_id else keccak(text=args.name)
        market = await marketplace(args)
        try:
            stake = args.stake if args.stake is not None else await market.param("modelMinStake")
            tags = [t.strip() for t in args.tags.split(",") if t.strip()]
            model_id, tx = await market.register_model(base, to_bytes32(args.ipfs_cid), stake,
                                                       args.name, tags)
        finally:
            await market.client.close()
        print(f"model {args.name!r} registered: {model_id}")
        print(f"stake {fmt_mor(stake)}, tags {tags}, tx {tx.tx_hash}, gas {tx.gas_used}")

    run(body)


if __name__ == "__main__":
    main()
