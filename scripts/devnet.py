#!/usr/bin/env python3
"""Local marketplace devnet: `up` (background), `status`, `down`, or `demo` (a paid chat).

`up --backend-url URL` puts the devnet in front of an OpenAI-compatible server that is
already running (vLLM, llama.cpp, Ollama, a mock...) instead of the embedded SmolLM2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy_router.dev.devnet import MODEL_NAME, BackendError, Devnet, choose_backend

DEFAULT_ROOT = Path(".devnet")
DEFAULT_SLOTS = 4


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


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
    p.add_argument("--backend-url", metavar="URL",
                   help="up: serve this running OpenAI-compatible server (its base URL, e.g. "
                   "http://127.0.0.1:8000/v1; a .../chat/completions URL is cut back) instead "
                   "of starting llama.cpp with SmolLM2; it must answer GET /models")
    p.add_argument("--slots", type=positive_int, default=None, metavar="N",
                   help=f"up: the model's concurrentSlots, prompts the provider runs at once "
                   f"(default {DEFAULT_SLOTS})")
    p.add_argument("--model-name", metavar="NAME",
                   help=f"up: the model name registered on chain and sent to the server "
                   f"(default: {MODEL_NAME}; with --backend-url, the first model id the "
                   "server's /models lists)")
    args = p.parse_args()
    if args.command != "up":
        given = [flag for flag, value in (("--backend-url", args.backend_url),
                                          ("--slots", args.slots),
                                          ("--model-name", args.model_name)) if value is not None]
        if given:
            p.error(f"{', '.join(given)}: only with `up`")
    if args.model_name is not None and not args.model_name.strip():
        p.error("--model-name must not be empty")
    root = args.dir.resolve()
    net = Devnet(root)
    if args.command == "up":
        if (root / "state.json").exists():
            print(f"a devnet is already recorded in {root}; run `down` first", file=sys.stderr)
            return 1
        try:
            backend_url, model_name = choose_backend(
                args.backend_url, args.model_name, note=lambda m: print(m, file=sys.stderr))
        except BackendError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        state = net.up(flavor=args.flavor, diamond=args.diamond, backend_url=backend_url,
                       concurrent_slots=args.slots or DEFAULT_SLOTS, model_name=model_name)
        print(json.dumps({"consumer_url": state.consumer_url, "model": state.model_name,
                          "backend_url": state.backend_url,
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
