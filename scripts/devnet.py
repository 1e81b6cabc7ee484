#!/usr/bin/env python3
"""Local marketplace devnet: `up` (background), `status`, `down`, or `demo` (a paid chat)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy_router.dev.devnet import Devnet

DEFAULT_ROOT = Path(".devnet")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("command", choices=["up", "status", "down", "demo"])
    p.add_argument("--dir", type=Path, default=DEFAULT_ROOT,
                   help=f"state folder (default: {DEFAULT_ROOT})")
    p.add_argument("--flavor", choices=["native", "morpheus"], default="native",
                   help="the marketplace: ours (default) or a Morpheus-Lumerin diamond")
    p.add_argument("--diamond", choices=["double", "reference"], default="double",
                   help="with --flavor morpheus: our double of the diamond (default) or the "
                   "reference's own contracts (needs MORPHEUS_SRC, see ../shared/morpheus-ref)")
    args = p.parse_args()
    root = args.dir.resolve()
    net = Devnet(root)
    if args.command == "up":
        if (root / "state.json").exists():
            print(f"a devnet is already recorded in {root}; run `down` first", file=sys.stderr)
            return 1
        state = net.up(flavor=args.flavor, diamond=args.diamond)
        print(json.dumps({"consumer_url": state.consumer_url, "model": state.model_name,
                          "state": str(root / "state.json"),
                          "api_token_file": str(state.api_token_path())},
                         indent=2))
        return 0
    if args.command == "status":
        if not (root / "state.json").exists():
            print("no devnet is up")
            return 1
        print(json.dumps(Devnet.status(root), indent=2))
        return 0
    if args.command == "down":
        print("stopped" if net.down() else "no devnet is up")
        return 0
    from proxy_router.dev.demo import run_demo

    return run_demo(net, root)


if __name__ == "__main__":
    sys.exit(main())
