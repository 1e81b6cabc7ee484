"""Gas of one session lifecycle in each marketplace flavour, side by side, on fresh anvils.

    .venv/bin/python bench/gas_flavors.py [--json]

For native (our Marketplace), morpheus-double (our Solidity double of the diamond) and
morpheus-reference (the Morpheus-Lumerin diamond compiled from ``MORPHEUS_SRC``; skipped,
with one line saying so, when that is unset) it starts an anvil of its own, deploys, and
walks one provider and one user through the flavour's Python API, recording
``TxResult.gas_used`` of each write: providerRegister, modelRegister, postModelBid,
openSession (direct: first ever, second), closeSession (user, provider-signed 7-field
receipt: first ever, second), the diamond's stake-mode openSession + closeSession (5-field receipt),
withdrawUserStakes past the next UTC midnight, and claimForProvider (diamond: a session
the user never closed, after its end; native: a disputed share after the dispute window,
its only claim path; native's own way to collect a session the user never closed is a
provider's closeSession, its own row). Both parties hold a standing MOR allowance first
(approvals are not counted). Every figure is measured in the run; anvils stop on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal

from proxy_router.chain.client import ChainClient, TxResult
from proxy_router.chain.deploy import deploy_all
from proxy_router.chain.encoding import Approval, Receipt, sign_blob
from proxy_router.chain.flavor import to_bytes32
from proxy_router.chain.marketplace import Marketplace
from proxy_router.chain.markets import Market
from proxy_router.chain.morpheus import DAY, MorpheusMarketplace, start_of_day
from proxy_router.dev.anvil import Anvil, anvil_binary, dev_address, dev_key
from proxy_router.dev.morpheus_net import deploy, reference_available

Column = Literal["native", "morpheus-double", "morpheus-reference"]
COLUMNS: tuple[Column, ...] = ("native", "morpheus-double", "morpheus-reference")
DEPLOYER, PROVIDER, USER, FEE_RECIPIENT = 0, 1, 2, 9
MOR = 10**18
PRICE = 10**15  # MOR wei per second: inside both flavours' price bounds
HOUR = 3600
PROVIDER_STAKE = 100 * MOR  # the diamond caps a provider's pay at its stake per period
ALLOWANCE = 50_000 * MOR  # standing allowance: a diamond stake is hundreds of MOR

# (key, label) per row, in lifecycle order.
STEPS: tuple[tuple[str, str], ...] = (
    ("providerRegister", "providerRegister (first)"),
    ("modelRegister", "modelRegister (new model, 1 tag)"),
    ("postModelBid", "postModelBid (first bid)"),
    ("open1", "openSession direct (first ever)"),
    ("open2", "openSession direct (second)"),
    ("close", "closeSession direct (user; provider's 7-field receipt), first ever"),
    ("close2", "closeSession direct, second (same receipt layout)"),
    ("openStake", "openSession stake mode"),
    ("closeStake", "closeSession stake mode (5-field receipt)"),
    ("withdraw", "withdrawUserStakes past next UTC midnight (3 holds)"),
    ("claim", "claimForProvider (diamond: unclosed session after end; native: disputed share)"),
    ("closeByProvider", "closeSession by provider after expiry (native's path for unclosed)"),
)
RATIOS = ("open1", "open2", "close", "close2")


class Walk:
    """One provider and one user of a flavour, with the signed blobs both flavours take."""

    def __init__(self, anvil: Anvil, provider: Market, user: Market) -> None:
        self.anvil, self.provider, self.user = anvil, provider, user
        self.gas: dict[str, int] = {}
        self._stamps: set[int] = set()

    def record(self, key: str, tx: TxResult) -> None:
        self.gas[key] = tx.gas_used

    async def now(self) -> int:
        return (await self.user.client.head())[1]

    async def allow(self) -> None:
        for market in (self.provider, self.user):
            await market.client.transact(market.token, "approve", market.address, ALLOWANCE)

    async def offer(self) -> str:
        p = self.provider
        self.record("providerRegister", await p.register_provider(PROVIDER_STAKE,
                                                                  "127.0.0.1:3333"))
        model_id, tx = await p.register_model(b"\x01" * 32, b"\x02" * 32, MOR // 10,
                                              "llama-3-8b", ["llm"])
        self.record("modelRegister", tx)
        bid_id, tx = await p.post_bid(model_id, PRICE)
        self.record("postModelBid", tx)
        return bid_id

    async def open(self, bid_id: str, *, direct: bool = True) -> tuple[str, TxResult]:
        stake = await self.user.stake_for(PRICE, HOUR, direct=direct)
        # a distinct stamp per approval: the same bytes twice are a reused approval
        stamp = await self.now() - 1
        while stamp in self._stamps:
            stamp -= 1
        self._stamps.add(stamp)
        approval = Approval(to_bytes32(bid_id), self.user.client.chain_id,
                            self.user.client.address, stamp).encode()
        assert self.provider.client.account is not None
        return await self.user.open_session(
            stake, approval, sign_blob(self.provider.client.account, approval), direct=direct)

    async def receipt(self, signer: Market, session_id: str, fields: int = 7
                      ) -> tuple[bytes, bytes]:
        blob = Receipt(to_bytes32(session_id), signer.client.chain_id, await self.now(),
                       tps_x1000=42_000, ttft_ms=180, prompt_tokens=120,
                       completion_tokens=480).encode()[:fields * 32]
        assert signer.client.account is not None
        return blob, sign_blob(signer.client.account, blob)


async def walk_native(walk: Walk) -> None:
    p, u = walk.provider, walk.user
    assert isinstance(p, Marketplace) and isinstance(u, Marketplace)
    bid_id = await walk.offer()
    first, tx = await walk.open(bid_id)
    walk.record("open1", tx)
    second, tx = await walk.open(bid_id)
    walk.record("open2", tx)
    unclosed, _ = await walk.open(bid_id)  # setup, not rows
    disputed, _ = await walk.open(bid_id)
    walk.anvil.increase_time(600)
    walk.record("close", await u.close_session(*await walk.receipt(p, first)))
    walk.record("close2", await u.close_session(*await walk.receipt(p, second)))
    await u.close_session(*await walk.receipt(u, disputed))  # user-signed: disputed
    walk.anvil.increase_time(HOUR)
    walk.record("closeByProvider", await p.close_session(*await walk.receipt(p, unclosed)))
    walk.anvil.increase_time(await p.param("disputeWindow") + 1)
    walk.record("claim", await p.claim_for_provider(disputed))


async def walk_morpheus(walk: Walk) -> None:
    p, u = walk.provider, walk.user
    assert isinstance(p, MorpheusMarketplace) and isinstance(u, MorpheusMarketplace)
    bid_id = await walk.offer()
    first, tx = await walk.open(bid_id)
    walk.record("open1", tx)
    second, tx = await walk.open(bid_id)
    walk.record("open2", tx)
    unclosed, _ = await walk.open(bid_id)  # setup, not a row
    walk.anvil.increase_time(600)
    walk.record("close", await u.close_session(*await walk.receipt(p, first)))
    walk.record("close2", await u.close_session(*await walk.receipt(p, second)))
    staked, tx = await walk.open(bid_id, direct=False)
    walk.record("openStake", tx)
    walk.anvil.increase_time(600)
    walk.record("closeStake", await u.close_session(*await walk.receipt(p, staked, 5)))

    now = await walk.now()
    walk.anvil.increase_time(start_of_day(now) + DAY - now + 1)
    available, _ = await u.held_stakes(u.me)
    assert available > 0, "nothing on hold after the early closes"
    walk.record("withdraw", await u.withdraw_held())

    session = await p.get_session(unclosed)
    now = await walk.now()
    if now <= session.ends_at:
        walk.anvil.increase_time(session.ends_at - now + 1)
    assert p.claimable(session, await walk.now()) > 0, "the unclosed session owes nothing"
    walk.record("claim", await p.claim_for_provider(unclosed))


async def measure(column: Column, anvil: Anvil) -> dict[str, int]:
    deployer = await ChainClient.connect(anvil.rpc_url, dev_key(DEPLOYER))
    provider = await ChainClient.connect(anvil.rpc_url, dev_key(PROVIDER))
    user = await ChainClient.connect(anvil.rpc_url, dev_key(USER))
    try:
        if column == "native":
            dep = await deploy_all(deployer, fee_recipient=dev_address(FEE_RECIPIENT),
                                   fund=[dev_address(PROVIDER), dev_address(USER)])
            addresses = (dep.marketplace_address, dep.mor_token_address)
            walk = Walk(anvil, Marketplace(provider, *addresses), Marketplace(user, *addresses))
            await walk.allow()
            await walk_native(walk)
        else:
            net = await deploy("double" if column == "morpheus-double" else "reference",
                               anvil.rpc_url)
            walk = Walk(anvil, MorpheusMarketplace(provider, net.diamond, net.mor),
                        MorpheusMarketplace(user, net.diamond, net.mor))
            await walk.allow()
            await walk_morpheus(walk)
        return walk.gas
    finally:
        for client in (deployer, provider, user):
            await client.close()


def anvil_version() -> str:
    out = subprocess.run([anvil_binary(), "--version"], capture_output=True, text=True,
                         timeout=30).stdout
    return out.splitlines()[0].strip() if out else "anvil (version unknown)"


@dataclass
class Row:
    step: str
    label: str
    gas: dict[Column, int | None]


def rows_of(results: dict[Column, dict[str, int]]) -> list[Row]:
    return [Row(key, label, {c: results[c].get(key) if c in results else None
                             for c in COLUMNS}) for key, label in STEPS]


def print_table(rows: list[Row], measured: list[Column]) -> None:
    headers = ("step", *measured)
    body = [(r.label, *("—" if r.gas[c] is None else f"{r.gas[c]:,}" for c in measured))
            for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(headers)]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    print(fmt(headers))
    print("  ".join("-" * w for w in widths))
    for line in body:
        print(fmt(line))
    if "morpheus-reference" in measured:
        print()
        for row in rows:
            ref, native = row.gas["morpheus-reference"], row.gas["native"]
            if row.step in RATIOS and ref is not None and native:
                print(f"{row.label}: reference / native = {ref / native:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Gas of one session lifecycle in the native marketplace and the "
                    "Morpheus diamond (double; reference when MORPHEUS_SRC is set).")
    parser.add_argument("--json", action="store_true",
                        help="print the rows as JSON instead of a table")
    args = parser.parse_args(argv)

    columns = list(COLUMNS)
    skipped = reference_available()
    if skipped:
        columns.remove("morpheus-reference")
    results: dict[Column, dict[str, int]] = {}
    for column in columns:
        with Anvil() as anvil:
            results[column] = asyncio.run(measure(column, anvil))
    rows = rows_of(results)
    note = f"morpheus-reference NOT measured: {skipped}" if skipped else None
    if args.json:
        print(json.dumps([{"step": r.step, "label": r.label, **r.gas} for r in rows],
                         indent=2))
        if note:
            print(note, file=sys.stderr)
    else:
        print(f"{anvil_version()}; price {PRICE:,} wei/s, 1-hour sessions, closes after 600 s")
        print()
        print_table(rows, columns)
        if note:
            print(f"\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
