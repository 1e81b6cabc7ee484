"""``proxy-router session list|close`` (the wallet as a user) and ``proxy-router earnings``
(the wallet as a provider), read from the chain.

What a close moves differs by flavour. Ours refunds the unused stake at once and, for a
dispute, holds the provider's share for the dispute window (``claimForProvider`` after
it). The Morpheus diamond holds the stake that today's used time is worth until the
next UTC midnight (``wallet withdraw-held``), holds the provider's share of the day
after a disputed close, and pays a provider what a session earned whenever
``claimForProvider`` is called, reverting with ``Panic(0x11)`` when nothing is owed:
so a claim is only sent where the flavour's ``claimable`` is positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy_router.chain.errors import ContractReverted
from proxy_router.chain.markets import Market
from proxy_router.chain.morpheus import DAY, MorpheusMarketplace, start_of_day
from proxy_router.chain.types import Session
from proxy_router.cli.args import Commands, Parser, id32_arg
from proxy_router.cli.context import CliError, Context, mor_received
from proxy_router.cli.output import fields, print_json, table, when
from proxy_router.cli.units import fmt_eth, fmt_mor, with_wei
from proxy_router.consumer.links import ProviderPool
from proxy_router.consumer.settlement import Settlement, Settler
from proxy_router.morrpc import RpcPool, Signer


def add_commands(sub: Commands, common: Parser, as_json: Parser) -> None:
    group = sub.add_parser("session", parents=[common], help="the wallet's sessions as a user",
                           description="Sessions this wallet opened as a user.")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("list", parents=[common, as_json], help="the wallet's sessions",
                           description="The wallet's sessions as a user (getSessionsByUser), "
                                       "oldest first.")
    p.set_defaults(handler=session_list)
    p = actions.add_parser(
        "close", parents=[common, as_json], help="settle a session",
        description="Settle a session: with the provider's signed receipt (MOR-RPC "
                    "session.report) when it answers, else with our own receipt (a dispute). "
                    "native: the refund is paid now; a disputed provider share is held for the "
                    "dispute window. morpheus: the diamond holds the stake today's used time "
                    "is worth until the next UTC midnight (then `wallet withdraw-held`), and "
                    "after a dispute the provider's share of the day too.")
    p.add_argument("session_id", type=id32_arg, metavar="SESSION_ID")
    p.set_defaults(handler=session_close)

    p = sub.add_parser("earnings", parents=[common, as_json],
                       help="the provider's earnings; claim what is owed",
                       description="The wallet's sessions as a provider: paid, held (not paid "
                                   "yet) and claimable (what claimForProvider pays now). "
                                   "native: disputed shares after their dispute window. "
                                   "morpheus: what each ended session earned and was not paid, "
                                   "less the close day's share of a session closed early, "
                                   "held until the next UTC midnight.")
    p.add_argument("--claim", action="store_true",
                   help="claim every positive claimable amount (claimForProvider), nothing "
                        "else: the diamond reverts when nothing is owed")
    p.set_defaults(handler=earnings)


async def _model_names(market: Market, sessions: list[Session]) -> dict[str, str]:
    names: dict[str, str] = {}
    for model_id in {s.model_id for s in sessions}:
        names[model_id] = (await market.get_model(model_id)).name or "?"
    return names


# -- session ----------------------------------------------------------------------------


async def session_list(ctx: Context) -> None:
    market = await ctx.market()
    sessions = await market.sessions_of(ctx.address)
    now = await ctx.chain_now(market)
    names = await _model_names(market, sessions)
    if ctx.args.json:
        print_json([{**s.to_json(), "status": s.status(now).value,
                     "modelName": names[s.model_id]} for s in sessions])
        return
    table(["SESSION ID", "PROVIDER", "MODEL", "STAKE", "OPENED", "ENDS", "STATUS"],
          [[s.id, s.provider, names[s.model_id], fmt_mor(s.stake), when(s.opened_at),
            when(s.ends_at), s.status(now).value] for s in sessions], empty="no sessions")


async def session_close(ctx: Context) -> None:
    settings = ctx.settings
    market = await ctx.market(sign=True)
    signer = Signer.from_key(settings.private_key)
    now = await ctx.chain_now(market)
    pool = ProviderPool(RpcPool(signer, connect_timeout=settings.mor_rpc_connect_timeout_s,
                                first_frame_timeout=settings.first_token_timeout_s),
                        market.client.chain_id, wire=settings.provider_wire)
    try:
        settled = await Settler(market, pool, signer.account,
                                clock=lambda: now).settle(ctx.args.session_id)
    finally:
        await pool.close()
    holds = (await diamond_holds(market, settled) if isinstance(market, MorpheusMarketplace)
             else None)
    if ctx.args.json:
        print_json({**settled.to_json(), "flavor": market.flavor,
                    **(holds.to_json() if holds else {})})
        return
    report_settlement(settled, holds)


@dataclass(frozen=True)
class DiamondHolds:
    """How the diamond split what a close kept: ``user_held`` (the user's stake, back
    through ``withdrawUserStakes`` after ``release_at``) and ``provider_held`` (the
    provider's share not paid yet, through ``claimForProvider``)."""

    provider_share: int  # what the session earned the provider, paid or not
    user_held: int
    provider_held: int
    release_at: int  # the UTC midnight after the close
    direct_payment: bool

    def to_json(self) -> dict[str, Any]:
        return {"providerShare": self.provider_share, "userHeld": self.user_held,
                "providerHeld": self.provider_held, "releaseAt": self.release_at,
                "directPayment": self.direct_payment}


async def diamond_holds(market: MorpheusMarketplace, settled: Settlement) -> DiamondHolds:
    """Split ``settled.held`` (what left neither the diamond nor, for a stake-mode
    session, the funding account) with the session read back after the close: a direct
    payment's unpaid provider share stays in the stake, the rest is the user's."""
    after = await market.get_session(settled.session_id)
    in_stake = after.held if after.direct_payment else 0
    return DiamondHolds(provider_share=after.provider_earned,
                        user_held=settled.held - in_stake, provider_held=after.held,
                        release_at=start_of_day(after.closed_at) + DAY,
                        direct_payment=after.direct_payment)


def report_settlement(s: Settlement, holds: DiamondHolds | None = None) -> None:
    if not s.disputed:
        print(f"session {s.session_id} closed with the provider's signed receipt")
    else:
        why = f" ({s.receipt_error})" if s.receipt_error else ""
        print(f"session {s.session_id} closed with our own receipt: a dispute; the provider's "
              f"receipt was unavailable{why}")
    if holds is None:
        fields([("stake", with_wei(s.stake)), ("provider earned", with_wei(s.provider_earned)),
                ("user refund", with_wei(s.user_refund)),
                ("held", with_wei(s.held) + (" (released to the provider after the dispute "
                                              "window)" if s.held else ""))])
    else:
        midnight = when(holds.release_at)
        payer = "" if holds.direct_payment else " (by the funding account: stake mode)"
        fields([("stake", with_wei(s.stake)),
                ("provider share", with_wei(holds.provider_share)),
                ("provider paid now", with_wei(s.provider_earned) + payer),
                ("user refund", with_wei(s.user_refund) + " (paid now)"),
                ("held", with_wei(holds.user_held) + (
                    f" of the stake, until the next UTC midnight ({midnight}); then "
                    "`proxy-router wallet withdraw-held`" if holds.user_held else "")),
                ("provider held", with_wei(holds.provider_held) + (
                    f" (the provider claims it after {midnight}: `proxy-router earnings "
                    "--claim`)" if holds.provider_held else ""))])
    print(f"tx {s.tx} (gas {s.gas_used}, cost {fmt_eth(s.gas_cost_wei)})")


# -- earnings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Earning:
    """One session as its provider sees it. ``held`` is what an ended session earned and
    was not paid yet; ``claimable`` the part of it ``claimForProvider`` pays now;
    ``accruing`` what a session that has not ended earned so far."""

    session: Session
    earned: int
    paid: int
    held: int
    claimable: int
    accruing: int
    state: str


def native_earning(s: Session, now: int) -> Earning:
    """Ours pays an undisputed close at once; a disputed share after its window."""
    if not s.closed:
        so_far = s.cost_so_far(now)
        return Earning(s, so_far, 0, 0, 0, so_far, s.status(now).value)
    released = s.held > 0 and not s.claimed and s.release_at <= now
    if not s.disputed:
        state = "paid"
    elif s.claimed:
        state = "claimed"
    elif not s.held:
        state = "disputed"
    else:
        state = "claimable" if released else f"held until {when(s.release_at)}"
    return Earning(s, s.provider_earned, s.provider_earned - s.held, s.held,
                   s.held if released else 0, 0, state)


def diamond_earning(market: MorpheusMarketplace, s: Session, now: int) -> Earning:
    """The diamond owes every ended session its time, closed or not, less what was
    withdrawn; ``claimable`` is the flavour's (never the quirk that reverts)."""
    if not s.closed and now < s.ends_at:
        so_far = s.cost_so_far(now)
        return Earning(s, so_far, s.claimed_amount, 0, 0, so_far, s.status(now).value)
    end = min(s.closed_at, s.ends_at) if s.closed else s.ends_at
    earned = (end - s.opened_at) * s.price_per_second
    held = max(0, earned - s.claimed_amount)
    owed = market.claimable(s, now)
    if not held:
        state = "paid"
    elif owed:
        state = "claimable"
    elif s.closed:
        state = f"held until {when(start_of_day(s.closed_at) + DAY)}"
    else:
        state = s.status(now).value
    return Earning(s, earned, s.claimed_amount, held, owed, 0, state)


def earning(market: Market, s: Session, now: int) -> Earning:
    if isinstance(market, MorpheusMarketplace):
        return diamond_earning(market, s, now)
    return native_earning(s, now)


def totals(rows: list[Earning]) -> dict[str, int]:
    return {"paid": sum(e.paid for e in rows), "held": sum(e.held for e in rows),
            "claimable": sum(e.claimable for e in rows),
            "accruing": sum(e.accruing for e in rows)}


async def earnings(ctx: Context) -> None:
    market = await ctx.market(sign=ctx.args.claim)
    provider = market.client.address if ctx.args.claim else ctx.address
    sessions = await market.sessions_of(provider, as_provider=True)
    now = await ctx.chain_now(market)
    claimed: list[dict[str, Any]] = []
    failed: list[str] = []
    if ctx.args.claim:
        for i, s in enumerate(sessions):
            if not earning(market, s, now).claimable:
                continue
            try:
                tx = await market.claim_for_provider(s.id)
            except ContractReverted as exc:
                failed.append(f"{s.id}: {exc.reason}")
                continue
            claimed.append({"sessionId": s.id, "amount": mor_received(tx, provider),
                            "tx": tx.tx_hash, "gasUsed": tx.gas_used})
            sessions[i] = await market.get_session(s.id)
        now = await ctx.chain_now(market)
    rows = [earning(market, s, now) for s in sessions]
    sums = totals(rows)
    if ctx.args.json:
        print_json({"provider": provider, "flavor": market.flavor, "chainNow": now, **sums,
                    "sessions": [{**e.session.to_json(), "status": e.session.status(now).value,
                                  "earned": e.earned, "paid": e.paid, "held": e.held,
                                  "state": e.state, "claimable": e.claimable > 0,
                                  "claimableAmount": e.claimable} for e in rows],
                    **({"claimed": claimed} if ctx.args.claim else {})})
    else:
        table(["SESSION ID", "USER", "STAKE", "EARNED", "HELD", "STATE"],
              [[e.session.id, e.session.user, fmt_mor(e.session.stake), fmt_mor(e.earned),
                fmt_mor(e.held), e.state] for e in rows], empty="no sessions")
        for c in claimed:
            print(f"claimed {with_wei(c['amount'])} from session {c['sessionId']}, "
                  f"tx {c['tx']}")
        if ctx.args.claim and not claimed and not failed:
            print("nothing to claim")
        fields([("provider", provider), ("paid", with_wei(sums["paid"])),
                ("held", with_wei(sums["held"]) + " (ended, not paid yet)"),
                ("claimable", with_wei(sums["claimable"]) + " (now)"),
                ("accruing", with_wei(sums["accruing"]) + " (open sessions, so far)")])
    if failed:
        raise CliError(f"{len(failed)} claim(s) failed: " + "; ".join(failed))
