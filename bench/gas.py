"""Gas used by every Marketplace write, on a fresh local anvil, against the DESIGN.md targets.

    .venv/bin/python bench/gas.py [--json] [--anvil-log PATH]

Starts its own anvil, deploys MorToken + Marketplace, walks one provider and one user through the
whole lifecycle (register, model, bids, sessions closed every way, a claim) and prints the gas of
each transaction next to the design targets (openSession <= 200k, closeSession <= 150k) and the
reference contracts' figures (openSession ~439k, closeSession ~479k). Both parties hold a standing
MOR allowance (approvals are separate transactions, not counted). Exits 1 when a target is
missed. Stops its anvil on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from proxy_router.chain.client import ChainClient, TxResult
from proxy_router.chain.deploy import deploy_all
from proxy_router.chain.encoding import Approval, Receipt, sign_blob
from proxy_router.chain.marketplace import Marketplace, to_bytes32
from proxy_router.dev.anvil import Anvil, dev_address, dev_key

DEPLOYER, PROVIDER, USER, FEE_RECIPIENT = 0, 1, 2, 9
MOR = 10**18
PRICE = 10**15  # MOR wei per second
HOUR_STAKE = 3600 * PRICE
TARGETS = {"openSession": 200_000, "closeSession": 150_000}
REFERENCE = {"openSession": 439_000, "closeSession": 479_000}


@dataclass
class Row:
    function: str
    case: str
    gas: int
    target: int | None
    reference: int | None

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "ok" if self.gas <= self.target else "OVER"


class Walkthrough:
    def __init__(self, anvil: Anvil, provider: Marketplace, user: Marketplace) -> None:
        self.anvil = anvil
        self.provider = provider
        self.user = user
        self.rows: list[Row] = []
        self._approvals = 0

    def record(self, function: str, case: str, tx: TxResult) -> None:
        self.rows.append(Row(function, case, tx.gas_used, TARGETS.get(function),
                             REFERENCE.get(function)))

    async def _now(self) -> int:
        return int((await self.user.client.w3.eth.get_block("latest"))["timestamp"])

    async def open(self, bid_id: str) -> tuple[str, TxResult]:
        # Each approval is dated one second earlier than the last so no two are identical
        # (an approval's hash is the session nonce).
        self._approvals += 1
        approval = Approval(to_bytes32(bid_id), self.user.client.chain_id,
                            self.user.client.address, await self._now() - self._approvals
                            ).encode()
        assert self.provider.client.account is not None
        return await self.user.open_session(
            HOUR_STAKE, approval, sign_blob(self.provider.client.account, approval))

    async def receipt(self, signer: Marketplace, session_id: str) -> tuple[bytes, bytes]:
        blob = Receipt(to_bytes32(session_id), signer.client.chain_id, await self._now(),
                       tps_x1000=42_000, ttft_ms=180, prompt_tokens=120,
                       completion_tokens=480).encode()
        assert signer.client.account is not None
        return blob, sign_blob(signer.client.account, blob)

    async def run(self) -> list[Row]:
        p, u = self.provider, self.user
        # Standing allowances, as a router keeps: no row pays for an allowance that drops to
        # zero (a refund) or is re-created.
        for market in (p, u):
            await market.client.transact(market.token, "approve", market.address, 1_000 * MOR)
        self.record("providerRegister", "first registration",
                    await p.register_provider(MOR, "127.0.0.1:3333"))
        self.record("providerRegister", "top-up + endpoint change",
                    await p.register_provider(MOR, "127.0.0.1:4444"))
        model_id, tx = await p.register_model(b"\x01" * 32, b"\x02" * 32, MOR // 10,
                                              "llama-3-8b", ["chat", "llama"])
        self.record("modelRegister", "new model, 2 tags", tx)
        _, tx = await p.post_bid(model_id, 2 * PRICE)
        self.record("postModelBid", "first bid on the model", tx)
        bid_id, tx = await p.post_bid(model_id, PRICE)
        self.record("postModelBid", "replacing the previous bid", tx)

        sessions: list[str] = []
        for case in ("user's and provider's first", "subsequent", "subsequent", "subsequent"):
            session_id, tx = await self.open(bid_id)
            self.record("openSession", case, tx)
            sessions.append(session_id)
        first, second, disputed, expired = sessions

        self.anvil.increase_time(600)
        self.record("closeSession", "settled by user (first stats for provider+model)",
                    await u.close_session(*await self.receipt(p, first)))
        self.record("closeSession", "settled by user (subsequent)",
                    await u.close_session(*await self.receipt(p, second)))
        self.record("closeSession", "disputed by user (share held)",
                    await u.close_session(*await self.receipt(u, disputed)))
        self.anvil.increase_time(3600)
        self.record("closeSession", "by provider after expiry",
                    await p.close_session(*await self.receipt(p, expired)))

        self.anvil.increase_time(int(await p.param("disputeWindow")) + 1)
        self.record("claimForProvider", "disputed share after the window",
                    await p.claim_for_provider(disputed))
        return self.rows


async def measure(anvil: Anvil) -> list[Row]:
    deployer = await ChainClient.connect(anvil.rpc_url, dev_key(DEPLOYER))
    provider_client = await ChainClient.connect(anvil.rpc_url, dev_key(PROVIDER))
    user_client = await ChainClient.connect(anvil.rpc_url, dev_key(USER))
    try:
        deployment = await deploy_all(deployer, fee_recipient=dev_address(FEE_RECIPIENT),
                                      fund=[dev_address(PROVIDER), dev_address(USER)])
        market = (deployment.marketplace_address, deployment.mor_token_address)
        walk = Walkthrough(anvil, Marketplace(provider_client, *market),
                           Marketplace(user_client, *market))
        return await walk.run()
    finally:
        for client in (deployer, provider_client, user_client):
            await client.close()


def _k(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def print_table(rows: list[Row]) -> None:
    headers = ("function", "case", "gas", "target", "", "reference")
    body = [(r.function, r.case, _k(r.gas), _k(r.target) and f"<= {_k(r.target)}", r.verdict,
             _k(r.reference) and f"~{_k(r.reference)}") for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(headers)]
    right = {2, 3, 5}

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    print(fmt(headers))
    print("  ".join("-" * w for w in widths))
    for line in body:
        print(fmt(line))
    for fn, target in TARGETS.items():
        worst = max(r.gas for r in rows if r.function == fn)
        print(f"\n{fn}: worst {worst:,} gas = {worst / target:.0%} of the {target:,} target, "
              f"{worst / REFERENCE[fn]:.0%} of the reference's ~{REFERENCE[fn]:,}", end="")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Gas used by each Marketplace write on a fresh local anvil, against the "
                    "DESIGN.md targets (openSession <= 200k, closeSession <= 150k) and the "
                    "reference contracts (~439k / ~479k).")
    parser.add_argument("--json", action="store_true",
                        help="print the rows as JSON instead of a table")
    parser.add_argument("--anvil-log", type=Path, default=None,
                        help="append anvil's output to this file")
    args = parser.parse_args(argv)

    with Anvil(log_path=args.anvil_log) as anvil:
        rows = asyncio.run(measure(anvil))
    if args.json:
        print(json.dumps([{**asdict(r), "verdict": r.verdict} for r in rows], indent=2))
    else:
        print_table(rows)
    over = [r for r in rows if r.verdict == "OVER"]
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
