#!/usr/bin/env python3
"""Register a model on the marketplace (id = keccak256(owner, baseModelId)).

The work is ``proxy-router model register``'s (``proxy_router.cli.market``), with
anvil defaults (dev account #1, the SmolLM2 model of the devnet).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy_router.cli import market as commands
from proxy_router.dev.scripting import marketplace, mor, parser, run

DEFAULT_NAME = "SmolLM2-135M-Instruct"


def main() -> None:
    p = parser(__doc__ or "", key_index=1)
    p.add_argument("--name", default=DEFAULT_NAME, help=f"model name (default: {DEFAULT_NAME})")
    p.add_argument("--base-model-id", default=None,
                   help="0x 32-byte base id (default: keccak256 of the name)")
    p.add_argument("--ipfs-cid", default=commands.ZERO32, help="0x 32-byte IPFS CID digest")
    p.add_argument("--tags", default="llm,gguf", help="comma-separated tags (default: llm,gguf)")
    p.add_argument("--stake", type=mor, default=None,
                   help="MOR stake (default: the contract's minimum for a new model, nothing "
                        "for an update)")
    args = p.parse_args()

    async def body() -> None:
        tags = [t.strip() for t in args.tags.split(",") if t.strip()]
        market = await marketplace(args)
        try:
            registration = await commands.register_model(
                market, args.name, base_model_id=args.base_model_id, ipfs_cid=args.ipfs_cid,
                stake=args.stake, tags=tags)
        finally:
            await market.client.close()
        commands.report_model(registration)

    run(body)


if __name__ == "__main__":
    main()
