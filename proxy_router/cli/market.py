"""``proxy-router provider|model|bid ...``: what a provider puts on the market.

The functions under "shared" do the work and print the result; the commands and
``scripts/register_provider.py``, ``register_model.py`` and ``post_bid.py`` call them.
Both flavours (``MARKETPLACE_FLAVOR``) take the same commands; where the Morpheus
diamond differs (no counts in its records, a model fee, part of a provider's stake kept
for its pay period) the output says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_utils import keccak

from proxy_router.chain.client import TxResult
from proxy_router.chain.flavor import to_bytes32
from proxy_router.chain.markets import Market
from proxy_router.chain.morpheus import MorpheusMarketplace
from proxy_router.chain.types import Bid, Model, Provider, same_address
from proxy_router.cli.args import HEX32, Commands, Parser, address_arg, endpoint_arg, id32_arg
from proxy_router.cli.context import EXIT_CONFIG, FLAVORS, CliError, Context, mor_received
from proxy_router.cli.output import fields, print_json, table, tx_line, when
from proxy_router.cli.units import fmt_mor, mor_arg, wei_arg, with_wei

ZERO32 = "0x" + "00" * 32


def add_commands(sub: Commands, common: Parser, as_json: Parser) -> None:
    # provider
    group = sub.add_parser("provider", parents=[common], help="register this wallet as a provider",
                           description="The wallet as a provider: its MOR-RPC endpoint and "
                                       "stake on the marketplace of MARKETPLACE_FLAVOR (native: "
                                       "our Marketplace; morpheus: the Morpheus-Lumerin "
                                       "diamond).")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("register", parents=[common], help="register with a stake",
                           description="Register the wallet as a provider.")
    p.add_argument("--endpoint", type=endpoint_arg, required=True, metavar="HOST:PORT",
                   help="where consumers reach this provider's MOR-RPC listener")
    p.add_argument("--stake", type=mor_arg, default=None, metavar="MOR",
                   help="MOR to stake (default: the contract's minimum, providerMinStake "
                        "or getProviderMinimumStake)")
    p.set_defaults(handler=provider_register)
    p = actions.add_parser("update", parents=[common], help="change the endpoint, add stake",
                           description="Update a registered provider's endpoint and/or add "
                                       "MOR to its stake.")
    p.add_argument("--endpoint", type=endpoint_arg, required=True, metavar="HOST:PORT",
                   help="the (new) MOR-RPC endpoint")
    p.add_argument("--stake", type=mor_arg, default=0, metavar="MOR",
                   help="MOR to add to the stake (default: none)")
    p.set_defaults(handler=provider_update)
    p = actions.add_parser("deregister", parents=[common], help="leave; the stake comes back",
                           description="Deregister the provider and get its stake back "
                                       "(delete its bids first). The Morpheus diamond keeps "
                                       "what the provider earned in its running 365-day pay "
                                       "period staked until the period ends.")
    p.set_defaults(handler=provider_deregister)
    p = actions.add_parser("show", parents=[common, as_json], help="a provider's record",
                           description="A provider's on-chain record, active bids and the "
                                       "marketplace flavour.")
    p.add_argument("address", nargs="?", type=address_arg, metavar="ADDRESS",
                   help="provider address (default: this wallet)")
    p.set_defaults(handler=provider_show)

    # model
    group = sub.add_parser("model", parents=[common], help="register and list models",
                           description="Models on the marketplace (either flavour).")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("register", parents=[common], help="register a model",
                           description="Register a model (or, for a name this wallet already "
                                       "registered, update its tags and CID). Its id is "
                                       "keccak256(owner, baseModelId).")
    p.add_argument("--name", required=True, help="model name (what consumers ask for)")
    p.add_argument("--stake", type=mor_arg, default=None, metavar="MOR",
                   help="MOR to stake (default: the contract's modelMinStake for a new model, "
                        "nothing for an update)")
    p.add_argument("--tags", default="", metavar="a,b,...", help="comma-separated tags")
    p.add_argument("--base-model-id", type=id32_arg, default=None, metavar="HEX32",
                   help="0x 32-byte base id (default: keccak256 of the name)")
    p.add_argument("--ipfs-cid", type=id32_arg, default=ZERO32, metavar="HEX32",
                   help="0x 32-byte IPFS CID digest (default: zero)")
    p.add_argument("--fee", type=mor_arg, default=0, metavar="MOR",
                   help="morpheus flavour only: the model fee the diamond records (default: 0)")
    p.set_defaults(handler=model_register)
    p = actions.add_parser("deregister", parents=[common], help="deregister a model",
                           description="Deregister a model this wallet owns; its stake comes "
                                       "back (its bids must be deleted first).")
    p.add_argument("model_id", type=id32_arg, metavar="MODEL_ID")
    p.set_defaults(handler=model_deregister)
    p = actions.add_parser("list", parents=[common, as_json], help="active models",
                           description="Every active model on the marketplace. The Morpheus "
                                       "diamond does not keep a model's base id (its JSON "
                                       "baseModelId is null there).")
    p.set_defaults(handler=model_list)

    # bid
    group = sub.add_parser("bid", parents=[common], help="post, delete and list bids",
                           description="Bids: a provider's price for a model.")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("post", parents=[common], help="post (or replace) a bid",
                           description="Post a bid for a model; replaces this wallet's "
                                       "previous bid on it.")
    p.add_argument("--model", required=True, metavar="ID|NAME", help="model id or name")
    p.add_argument("--price", type=wei_arg, required=True, metavar="WEI_PER_SECOND",
                   help="price in MOR wei per second")
    p.set_defaults(handler=bid_post)
    p = actions.add_parser("delete", parents=[common], help="delete a bid",
                           description="Delete one of this wallet's bids.")
    p.add_argument("bid_id", type=id32_arg, metavar="BID_ID")
    p.set_defaults(handler=bid_delete)
    p = actions.add_parser("list", parents=[common, as_json], help="active bids",
                           description="Active bids, of one model or of all.")
    p.add_argument("--model", default=None, metavar="ID|NAME", help="only this model's bids")
    p.set_defaults(handler=bid_list)


# -- shared with scripts/ ---------------------------------------------------------------


@dataclass(frozen=True)
class ProviderChange:
    provider: Provider
    added: int
    tx: TxResult


async def register_provider(market: Market, endpoint: str,
                            stake: int | None = None) -> ProviderChange:
    """``providerRegister``: register, or update the endpoint and add ``stake``.
    ``stake`` None: the contract's minimum for a new (or deregistered) provider, else 0."""
    if stake is None:
        current = await market.get_provider(market.client.address)
        stake = 0 if current.registered else await market.provider_min_stake()
    tx = await market.register_provider(stake, endpoint)
    return ProviderChange(await market.get_provider(market.client.address), stake, tx)


def report_provider(change: ProviderChange, verb: str = "registered") -> None:
    info = change.provider
    print(f"provider {info.address} {verb} at {info.endpoint}")
    print(f"stake {with_wei(info.stake)} (added {fmt_mor(change.added)})")
    print(tx_line(change.tx))


@dataclass(frozen=True)
class ModelRegistration:
    model: Model
    added: int
    tx: TxResult


async def register_model(market: Market, name: str, *, base_model_id: str | None = None,
                         ipfs_cid: str = ZERO32, stake: int | None = None,
                         tags: list[str] | tuple[str, ...] = (), fee: int = 0
                         ) -> ModelRegistration:
    """``modelRegister``; ``stake`` None: the contract's minimum for a new model, else 0.
    ``fee`` is the diamond's model fee; our Marketplace has none."""
    base = to_bytes32(base_model_id) if base_model_id else keccak(text=name)
    model_id = "0x" + keccak(bytes.fromhex(market.client.address[2:]) + base).hex()
    if fee and not isinstance(market, MorpheusMarketplace):
        raise CliError("--fee is the Morpheus diamond's model fee; the native marketplace has "
                       "no model fee", EXIT_CONFIG)
    if stake is None:
        current = await market.get_model(model_id)
        stake = 0 if current.exists else await market.model_min_stake()
    if isinstance(market, MorpheusMarketplace):
        registered_id, tx = await market.register_model(base, to_bytes32(ipfs_cid), stake,
                                                        name, list(tags), fee=fee)
    else:
        registered_id, tx = await market.register_model(base, to_bytes32(ipfs_cid), stake,
                                                        name, list(tags))
    return ModelRegistration(await market.get_model(registered_id), stake, tx)


def report_model(reg: ModelRegistration) -> None:
    model = reg.model
    print(f"model {model.name!r} registered: {model.id}")
    print(f"stake {with_wei(model.stake)} (added {fmt_mor(reg.added)}), "
          f"tags {','.join(model.tags) or '-'}")
    print(tx_line(reg.tx))
    print(f"modelId={model.id}")


@dataclass(frozen=True)
class BidPosting:
    bid: Bid
    model: Model
    tx: TxResult


async def post_bid(market: Market, model: Model, price: int) -> BidPosting:
    bid_id, tx = await market.post_bid(model.id, price)
    return BidPosting(await market.get_bid(bid_id), model, tx)


def report_bid(posting: BidPosting) -> None:
    bid = posting.bid
    print(f"bid {bid.id} active for model {posting.model.name!r} ({posting.model.id})")
    print(f"price {bid.price_per_second} wei/s = {fmt_mor(bid.price_per_second * 3600)} per hour")
    print(tx_line(posting.tx))
    print(f"bidId={bid.id}")


async def registered_model(market: Market, model_id: str) -> Model:
    model = await market.get_model(model_id)
    if not model.exists:
        raise CliError(f"model {model_id} is not registered (or was deregistered)")
    return model


async def resolve_model(market: Market, text: str, *, prefer_owner: str | None = None
                        ) -> Model:
    """A model by 0x id, or by name among the active models (this wallet's first)."""
    if HEX32.match(text):
        return await registered_model(market, text.lower())
    named = [m for m in await market.active_models() if m.name == text]
    if len(named) > 1 and prefer_owner is not None:
        named = [m for m in named if same_address(m.owner, prefer_owner)] or named
    if not named:
        raise CliError(f"no active model is named {text!r} (see `proxy-router model list`)")
    if len(named) > 1:
        raise CliError(f"{len(named)} models are named {text!r}; give the id: "
                       + ", ".join(m.id for m in named))
    return named[0]


async def _paged_total(market: Market, getter: str, key: Any) -> int:
    """The total of one of the flavour's paged ``(ids, total)`` views (``GETTERS``), in
    one call: the diamond's records keep no counts (``active_bids`` and ``session_count``
    read 0 there)."""
    _, total = await market.client.call(market.contract, market.GETTERS[getter], key, 0, 0)
    return int(total)


async def model_bid_count(market: Market, model: Model) -> int:
    if isinstance(market, MorpheusMarketplace):
        return await _paged_total(market, "bids_of_model", to_bytes32(model.id))
    return model.active_bids


async def provider_session_count(market: Market, info: Provider) -> int:
    if isinstance(market, MorpheusMarketplace):
        return await _paged_total(market, "provider_sessions", info.address)
    return info.session_count


def model_json(market: Market, model: Model, bids: int) -> dict[str, Any]:
    """A model's record; the diamond keeps no base id (only the id derived from it)."""
    out = {**model.to_json(), "activeBids": bids}
    if isinstance(market, MorpheusMarketplace):
        out["baseModelId"] = None
    return out


# -- provider ---------------------------------------------------------------------------


async def provider_register(ctx: Context) -> None:
    market = await ctx.market(sign=True)
    current = await market.get_provider(market.client.address)
    if current.registered:
        raise CliError(f"provider {current.address} is already registered (at "
                       f"{current.endpoint}); use `proxy-router provider update`")
    report_provider(await register_provider(market, ctx.args.endpoint, ctx.args.stake))


async def provider_update(ctx: Context) -> None:
    market = await ctx.market(sign=True)
    current = await market.get_provider(market.client.address)
    if not current.registered:
        raise CliError(f"provider {current.address} is not registered; use "
                       "`proxy-router provider register`")
    report_provider(await register_provider(market, ctx.args.endpoint, ctx.args.stake),
                    "updated")


async def provider_deregister(ctx: Context) -> None:
    market = await ctx.market(sign=True)
    me = market.client.address
    tx = await market.deregister_provider()
    print(f"provider {me} deregistered; stake {with_wei(mor_received(tx, me))} returned")
    kept = (await market.get_provider(me)).stake
    if kept:
        print(f"stake {with_wei(kept)} stays staked: what the provider earned in its running "
              "365-day pay period, released by the diamond when the period ends")
    print(tx_line(tx))


def provider_status(info: Provider) -> str:
    if not info.created_at:
        return "not registered"
    return "deregistered" if info.is_deleted else "registered"


async def provider_show(ctx: Context) -> None:
    market = await ctx.market()
    address = ctx.args.address or ctx.address
    info = await market.get_provider(address)
    bids = await market.active_bid_ids_of(address) if info.created_at else []
    sessions = await provider_session_count(market, info) if info.created_at else 0
    if ctx.args.json:
        print_json({**info.to_json(), "activeBids": len(bids), "sessionCount": sessions,
                    "status": provider_status(info), "flavor": market.flavor, "bids": bids})
        return
    fields([("provider", info.address), ("marketplace", f"{FLAVORS[market.flavor]} at "
                                                        f"{market.address}"),
            ("status", provider_status(info)),
            ("endpoint", info.endpoint or "-"), ("stake", with_wei(info.stake)),
            ("since", when(info.created_at)), ("active bids", len(bids)),
            ("sessions", sessions)])
    for bid_id in bids:
        print(f"  bid {bid_id}")


# -- model ------------------------------------------------------------------------------


async def model_register(ctx: Context) -> None:
    market = await ctx.market(sign=True)
    tags = [t.strip() for t in ctx.args.tags.split(",") if t.strip()]
    report_model(await register_model(market, ctx.args.name, base_model_id=ctx.args.base_model_id,
                                      ipfs_cid=ctx.args.ipfs_cid, stake=ctx.args.stake,
                                      tags=tags, fee=ctx.args.fee))


async def model_deregister(ctx: Context) -> None:
    market = await ctx.market(sign=True)
    model = await registered_model(market, ctx.args.model_id)
    tx = await market.deregister_model(model.id)
    returned = mor_received(tx, market.client.address)
    print(f"model {model.name!r} ({model.id}) deregistered; stake {with_wei(returned)} "
          "returned")
    print(tx_line(tx))


async def model_list(ctx: Context) -> None:
    market = await ctx.market()
    models = await market.active_models()
    counts = [await model_bid_count(market, m) for m in models]
    if ctx.args.json:
        print_json([model_json(market, m, n) for m, n in zip(models, counts, strict=True)])
        return
    table(["MODEL ID", "NAME", "OWNER", "STAKE", "BIDS", "TAGS"],
          [[m.id, m.name, m.owner, fmt_mor(m.stake), n, ",".join(m.tags) or "-"]
           for m, n in zip(models, counts, strict=True)], empty="no active models")


# -- bid --------------------------------------------------------------------------------


async def bid_post(ctx: Context) -> None:
    market = await ctx.market(sign=True)
    model = await resolve_model(market, ctx.args.model, prefer_owner=market.client.address)
    report_bid(await post_bid(market, model, ctx.args.price))


async def bid_delete(ctx: Context) -> None:
    market = await ctx.market(sign=True)
    bid = await market.get_bid(ctx.args.bid_id)
    if not bid.active:
        raise CliError(f"bid {ctx.args.bid_id} is not active")
    tx = await market.delete_bid(bid.id)
    print(f"bid {bid.id} deleted")
    print(tx_line(tx))


async def bid_list(ctx: Context) -> None:
    market = await ctx.market()
    if ctx.args.model is not None:
        models = [await resolve_model(market, ctx.args.model)]
    else:
        models = await market.active_models()
    rows: list[tuple[Bid, Model]] = []
    for model in models:
        rows.extend((bid, model) for bid in await market.active_bids(model.id))
    if ctx.args.json:
        print_json([{**bid.to_json(), "modelName": model.name} for bid, model in rows])
        return
    table(["BID ID", "MODEL", "PROVIDER", "WEI/S", "PER HOUR", "POSTED"],
          [[bid.id, model.name, bid.provider, bid.price_per_second,
            fmt_mor(bid.price_per_second * 3600), when(bid.created_at)] for bid, model in rows],
          empty="no active bids")
