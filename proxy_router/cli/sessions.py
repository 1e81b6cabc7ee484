"""``proxy-router session list|close`` (the wallet as a user) and ``proxy-router earnings``
(the wallet as a provider), read from the chain."""

from __future__ import annotations

from typing import Any

from proxy_router.chain.errors import ContractReverted
from proxy_router.chain.markets import Market
from proxy_router.chain.types import Session
from proxy_router.cli.args import Commands, Parser, id32_arg
from proxy_router.cli.context import CliError, Context
from proxy_router.cli.output import fields, print_json, table, when
from proxy_router.cli.units import fmt_eth, fmt_mor, with_wei
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
                    "session.report) when it answers, else with our own receipt (a dispute: "
                    "the refund is paid now, the provider's share is held for the dispute "
                    "window).")
    p.add_argument("session_id", type=id32_arg, metavar="SESSION_ID")
    p.set_defaults(handler=session_close)

    p = sub.add_parser("earnings", parents=[common, as_json],
                       help="the provider's earnings; claim released disputed shares",
                       description="The wallet's sessions as a provider (getSessionsByProvider): "
                                   "paid, held (disputed shares in their dispute window) and "
                                   "claimable (released, not claimed yet).")
    p.add_argument("--claim", action="store_true",
                   help="claim every claimable share (claimForProvider)")
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
    pool = RpcPool(signer, connect_timeout=settings.mor_rpc_connect_timeout_s,
                   first_frame_timeout=settings.first_token_timeout_s)
    try:
        settled = await Settler(market, pool, signer.account,
                                clock=lambda: now).settle(ctx.args.session_id)
    finally:
        await pool.close()
    if ctx.args.json:
        print_json(settled.to_json())
        return
    report_settlement(settled)


def report_settlement(s: Settlement) -> None:
    if not s.disputed:
        print(f"session {s.session_id} closed with the provider's signed receipt")
    else:
        why = f" ({s.receipt_error})" if s.receipt_error else ""
        print(f"session {s.session_id} closed with our own receipt: a dispute; the provider's "
              f"receipt was unavailable{why}")
    fields([("stake", with_wei(s.stake)), ("provider earned", with_wei(s.provider_earned)),
            ("user refund", with_wei(s.user_refund)),
            ("held", with_wei(s.held) + (" (released to the provider after the dispute "
                                          "window)" if s.held else ""))])
    print(f"tx {s.tx} (gas {s.gas_used}, cost {fmt_eth(s.gas_cost_wei)})")


# -- earnings ---------------------------------------------------------------------------


def claimable(s: Session, now: int) -> bool:
    return s.closed and s.held > 0 and not s.claimed and s.release_at <= now


def state(s: Session, now: int) -> str:
    if not s.closed:
        return s.status(now).value
    if not s.disputed:
        return "paid"
    if s.claimed:
        return "claimed"
    if not s.held:
        return "disputed"
    return "claimable" if claimable(s, now) else f"held until {when(s.release_at)}"


def totals(sessions: list[Session], now: int) -> dict[str, int]:
    closed = [s for s in sessions if s.closed]
    return {"paid": sum(s.provider_earned - s.held for s in closed),
            "held": sum(s.held for s in closed),
            "claimable": sum(s.held for s in closed if claimable(s, now)),
            "accruing": sum(s.cost_so_far(now) for s in sessions if not s.closed)}


async def earnings(ctx: Context) -> None:
    market = await ctx.market(sign=ctx.args.claim)
    provider = market.client.address if ctx.args.claim else ctx.address
    sessions = await market.sessions_of(provider, as_provider=True)
    now = await ctx.chain_now(market)
    claimed: list[dict[str, Any]] = []
    failed: list[str] = []
    if ctx.args.claim:
        for i, s in enumerate(sessions):
            if not claimable(s, now):
                continue
            try:
                tx = await market.claim_for_provider(s.id)
            except ContractReverted as exc:
                failed.append(f"{s.id}: {exc.reason}")
                continue
            claimed.append({"sessionId": s.id, "amount": int(tx.event("ProviderClaimed")["amount"]),
                            "tx": tx.tx_hash, "gasUsed": tx.gas_used})
            sessions[i] = await market.get_session(s.id)
        now = await ctx.chain_now(market)
    sums = totals(sessions, now)
    if ctx.args.json:
        print_json({"provider": provider, "chainNow": now, **sums,
                    "sessions": [{**s.to_json(), "status": s.status(now).value,
                                  "state": state(s, now), "claimable": claimable(s, now)}
                                 for s in sessions],
                    **({"claimed": claimed} if ctx.args.claim else {})})
    else:
        table(["SESSION ID", "USER", "STAKE", "EARNED", "HELD", "STATE"],
              [[s.id, s.user, fmt_mor(s.stake),
                fmt_mor(s.provider_earned if s.closed else s.cost_so_far(now)),
                fmt_mor(s.held), state(s, now)] for s in sessions], empty="no sessions")
        for c in claimed:
            print(f"claimed {with_wei(c['amount'])} from session {c['sessionId']}, "
                  f"tx {c['tx']}")
        if ctx.args.claim and not claimed and not failed:
            print("nothing to claim")
        fields([("provider", provider), ("paid", with_wei(sums["paid"])),
                ("held", with_wei(sums["held"])), ("claimable", with_wei(sums["claimable"])),
                ("accruing", with_wei(sums["accruing"]) + " (open sessions, so far)")])
    if failed:
        raise CliError(f"{len(failed)} claim(s) failed: " + "; ".join(failed))
