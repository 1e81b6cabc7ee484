"""``proxy-router wallet ...``: key files, the address, balances, transfers, allowance.

``new`` and ``import`` write a Web3 Secret Storage keystore (mode 0600, never
overwritten) for ``KEYSTORE_PATH``. ``import`` reads the key from standard input (one
line) or a hidden prompt in a terminal, never from an argument, so it stays out of
shell history and process lists. Neither a key nor a password is ever printed.

``withdraw-held`` is the Morpheus flavour's: the diamond keeps part of an early-closed
session's stake until the next UTC midnight and pays it back only when asked; our
Marketplace refunds at close and holds nothing of the user's.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from pathlib import Path

from eth_account import Account

from proxy_router.chain.markets import Market
from proxy_router.chain.morpheus import DAY, MorpheusMarketplace, start_of_day
from proxy_router.cli.args import Commands, Parser, address_arg
from proxy_router.cli.context import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    FLAVORS,
    CliError,
    Context,
    mor_received,
)
from proxy_router.cli.output import fields, print_json, tx_line, when
from proxy_router.cli.units import parse_units, with_wei
from proxy_router.keystore import read_password, write_keystore

_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


def add_commands(sub: Commands, common: Parser, as_json: Parser) -> None:
    group = sub.add_parser("wallet", parents=[common], help="keystores, balances, transfers",
                           description="The wallet: an encrypted keystore (KEYSTORE_PATH) or "
                                       "WALLET_PRIVATE_KEY.")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("new", "create a keystore with a new random key"),
                       ("import", "encrypt an existing key (read from standard input or a "
                                  "hidden prompt) into a keystore")):
        p = actions.add_parser(name, parents=[common], help=text,
                               description=f"{text[0].upper()}{text[1:]}; prints the address. "
                                           "The file is written 0600 and never overwritten.")
        p.add_argument("--keystore", type=Path, required=True, metavar="FILE",
                       help="the keystore file to write (then set KEYSTORE_PATH to it)")
        p.add_argument("--password-file", type=Path, default=None, metavar="FILE",
                       help="file whose first line is the password (default: asked twice in "
                            "a terminal)")
        p.set_defaults(handler=wallet_new if name == "new" else wallet_import,
                       needs_settings=False)
    p = actions.add_parser("address", parents=[common], help="the wallet's address",
                           description="The configured wallet's address (a keystore that "
                                       "declares it is not unlocked).")
    p.set_defaults(handler=wallet_address)
    p = actions.add_parser("balance", parents=[common, as_json], help="ETH and MOR balances",
                           description="ETH and MOR held by an address, and the marketplace "
                                       "flavour; in the morpheus flavour also its stakes the "
                                       "diamond holds (withdrawable now / on hold until the "
                                       "next UTC midnight).")
    p.add_argument("address", nargs="?", type=address_arg, metavar="ADDRESS",
                   help="whose balance (default: this wallet)")
    p.set_defaults(handler=wallet_balance)
    p = actions.add_parser("send", parents=[common], help="send ETH or MOR",
                           description="Send ETH or MOR from the wallet.")
    p.add_argument("asset", type=str.upper, choices=["ETH", "MOR"], metavar="ETH|MOR")
    p.add_argument("amount", metavar="AMOUNT", help="decimal amount, e.g. 0.5")
    p.add_argument("--to", type=address_arg, required=True, metavar="ADDR")
    p.set_defaults(handler=wallet_send)
    p = actions.add_parser("allowance", parents=[common, as_json],
                           help="MOR the marketplace may take from the wallet",
                           description="The wallet's MOR allowance to the marketplace (the "
                                       "diamond in the morpheus flavour), raised automatically "
                                       "before stakes and sessions.")
    p.set_defaults(handler=wallet_allowance)
    p = actions.add_parser(
        "withdraw-held", parents=[common], help="morpheus: take back stakes held until midnight",
        description="Morpheus flavour only: the diamond holds the stake an early-closed "
                    "session's time of that day is worth until the next UTC midnight. Shows "
                    "what is withdrawable now and what is still on hold, and withdraws what "
                    "is released (withdrawUserStakes); exit 1, and no transaction, when nothing "
                    "is. The native marketplace refunds at close and holds nothing.")
    p.set_defaults(handler=wallet_withdraw_held)


# -- keystores (no chain, no settings) ---------------------------------------------------


def _password(args: argparse.Namespace) -> str:
    if args.password_file is None and not sys.stdin.isatty():
        raise CliError("no password: give --password-file FILE, or run in a terminal to be "
                       "asked", EXIT_CONFIG)
    return read_password(args.password_file, prompt=f"password for {args.keystore}: ",
                         confirm=True)


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise CliError(f"{path} already exists; not overwriting a keystore")


def _written(address: str, path: Path) -> None:
    print(address)
    print(f"keystore {path} written (mode 0600); set KEYSTORE_PATH={path.absolute()}",
          file=sys.stderr)


def wallet_new(args: argparse.Namespace) -> None:
    _refuse_existing(args.keystore)
    password = _password(args)
    account = Account.create()
    _written(write_keystore(args.keystore, "0x" + bytes(account.key).hex(), password),
             args.keystore)


def read_key() -> str:
    """The private key from a hidden prompt (terminal) or standard input's first line."""
    if sys.stdin.isatty():
        text = getpass.getpass("private key (hidden): ")
    else:
        text = sys.stdin.readline()
    text = text.strip()
    if not _KEY.match(text):
        raise CliError("standard input does not hold a private key (64 hex digits, 0x "
                       "optional, on one line)")
    key = text if text.startswith("0x") else "0x" + text
    try:
        Account.from_key(key)
    except Exception:  # the message could quote the key
        raise CliError("that private key is not valid on secp256k1") from None
    return key


def wallet_import(args: argparse.Namespace) -> None:
    _refuse_existing(args.keystore)
    key = read_key()
    password = _password(args)
    _written(write_keystore(args.keystore, key, password), args.keystore)


# -- the configured wallet ---------------------------------------------------------------


async def wallet_address(ctx: Context) -> None:
    print(ctx.address)


async def wallet_balance(ctx: Context) -> None:
    market = await ctx.market()
    address = ctx.args.address or ctx.address
    eth, mor = await market.eth_balance(address), await market.mor_balance(address)
    held = (await market.held_stakes(address) if isinstance(market, MorpheusMarketplace)
            else None)
    if ctx.args.json:
        print_json({"address": address, "flavor": market.flavor, "eth": eth, "mor": mor,
                    **({"heldStakes": {"withdrawable": held[0], "onHold": held[1]}}
                       if held is not None else {})})
        return
    rows = [("address", address), ("marketplace", FLAVORS[market.flavor]),
            ("ETH", with_wei(eth, "ETH")), ("MOR", with_wei(mor))]
    if held is not None:
        rows += held_rows(*held)
    fields(rows)


def held_rows(withdrawable: int, on_hold: int) -> list[tuple[str, str]]:
    return [("MOR held, withdrawable", with_wei(withdrawable)
             + (" (`proxy-router wallet withdraw-held`)" if withdrawable else "")),
            ("MOR held, on hold", with_wei(on_hold)
             + (" (until the next UTC midnight)" if on_hold else ""))]


async def wallet_withdraw_held(ctx: Context) -> None:
    if ctx.settings.marketplace_flavor != "morpheus":
        raise CliError("wallet withdraw-held is for the Morpheus diamond "
                       "(MARKETPLACE_FLAVOR=morpheus): the native marketplace refunds the "
                       "unused stake at close and holds nothing", EXIT_CONFIG)
    market = await ctx.market(sign=True)
    assert isinstance(market, MorpheusMarketplace)
    me = market.client.address
    withdrawable, on_hold = await market.held_stakes(me)
    fields([("address", me), *held_rows(withdrawable, on_hold)])
    if not withdrawable:
        midnight = start_of_day(await ctx.chain_now(market)) + DAY
        raise CliError("nothing to withdraw yet: " + (
            f"{with_wei(on_hold)} is on hold until {when(midnight)}" if on_hold
            else "the diamond holds no stake of this wallet"), EXIT_FAILURE)
    tx = await market.withdraw_held()
    returned = mor_received(tx, me)
    left, still = await market.held_stakes(me)
    print(f"withdrew {with_wei(returned)}")
    if left:
        print(f"{with_wei(left)} more is withdrawable (the diamond pays out a bounded number "
              "of holds per call): run it again")
    if still:
        print(f"{with_wei(still)} stays on hold until the next UTC midnight")
    print(tx_line(tx))


async def wallet_send(ctx: Context) -> None:
    asset, to = ctx.args.asset, ctx.args.to
    try:
        amount = parse_units(ctx.args.amount, asset)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    if asset == "ETH":
        client = await ctx.client(sign=True)
        tx = await client.send_value(to, amount)
    else:
        market: Market = await ctx.market(sign=True)
        tx = await market.send_mor(to, amount)
    print(f"sent {with_wei(amount, asset)} to {to}")
    print(tx_line(tx))


async def wallet_allowance(ctx: Context) -> None:
    market = await ctx.market()
    owner = ctx.address
    allowance = await market.mor_allowance(owner)
    if ctx.args.json:
        print_json({"owner": owner, "spender": market.address, "allowance": allowance})
        return
    fields([("owner", owner), ("marketplace", market.address),
            ("allowance", with_wei(allowance))])
