"""``proxy-router``: run a router (``--role provider|consumer``), or an operator command.

Both read the same configuration (the environment, ``./.env`` or ``--env-file``).
Exit codes: 0 done, 1 a failure (one line on stderr: a revert with its decoded
reason, an unreachable chain...), 2 bad configuration or usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from proxy_router import __version__
from proxy_router.cli import deploy, market, sessions, wallet
from proxy_router.cli.args import Parser
from proxy_router.cli.context import EXIT_CONFIG, Context, run_async
from proxy_router.config import Settings, describe_error, load_settings
from proxy_router.logs import configure_logging

LOG_LEVELS = ["debug", "info", "warning", "error"]
COMMANDS_EPILOG = """\
operator commands (each has --help), for the marketplace of MARKETPLACE_FLAVOR:
native (our Marketplace) or morpheus (the Morpheus-Lumerin diamond):
  deploy                               MorToken + Marketplace on a local or test chain
                                       (native only)
  provider register|update|deregister|show
  model register|deregister|list
  bid post|delete|list
  session list|close                   the wallet's sessions as a user
  earnings [--claim]                   the wallet's sessions as a provider
  wallet new|import|address|balance|send|allowance
  wallet withdraw-held                 morpheus only: stakes held until UTC midnight
"""


def build_parser() -> argparse.ArgumentParser:
    # Options every command also accepts after its name; SUPPRESS keeps the value given
    # before the name when it is not repeated after it.
    common = Parser(add_help=False)
    common.add_argument("--env-file", type=Path, default=argparse.SUPPRESS, metavar="PATH",
                        help="read variables from this file instead of ./.env")
    common.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                        help="log to stderr at this level (default for commands: error)")
    as_json = Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON (wei as strings)")

    parser = Parser(
        prog="proxy-router",
        description="Sell (provider) or buy (consumer) LLM inference on the MOR marketplace.\n"
                    "Configuration comes from the environment and .env; see .env.example.",
        epilog=COMMANDS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["provider", "consumer"], default=None,
                        help="provider: serve a model over MOR-RPC; consumer: local OpenAI API")
    parser.add_argument("--env-file", type=Path, default=None,
                        help="read variables from this file instead of ./.env")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                        help="overrides LOG_LEVEL")
    parser.add_argument("--version", action="version", version=f"proxy-router {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    deploy.add_commands(sub, common)
    market.add_commands(sub, common, as_json)
    sessions.add_commands(sub, common, as_json)
    wallet.add_commands(sub, common, as_json)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None and args.role is None:
        parser.error("give --role provider|consumer to run a router, or a command")
    if args.command is not None and args.role is not None:
        parser.error(f"--role runs a router; it does not go with the {args.command} command")
    return args


def _settings(args: argparse.Namespace) -> Settings | int:
    """The settings, or the exit code after printing why there are none."""
    if args.env_file is not None and not args.env_file.is_file():
        print(f"invalid configuration: --env-file {args.env_file} does not exist",
              file=sys.stderr)
        return EXIT_CONFIG
    try:
        return load_settings(args.env_file)
    except ValidationError as exc:
        print(describe_error(exc), file=sys.stderr)
        return EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command is not None:
        return run_command(args)
    settings = _settings(args)
    if isinstance(settings, int):
        return settings
    if args.log_level:
        settings.log_level = args.log_level
    configure_logging(settings.log_level, settings.log_format)
    try:
        return _event_loop_runner()(_run(args.role, settings))
    except KeyboardInterrupt:
        return 130


def run_command(args: argparse.Namespace) -> int:
    """An operator command: logs only at ``--log-level`` (default error), to stderr."""
    handler = args.handler
    if not getattr(args, "needs_settings", True):  # wallet new/import: a file, no chain
        configure_logging(args.log_level or "error")

        async def offline() -> None:
            handler(args)

        return run_async(offline())
    settings = _settings(args)
    if isinstance(settings, int):
        return settings
    configure_logging(args.log_level or "error", settings.log_format)
    assert inspect.iscoroutinefunction(handler)
    ctx = Context(settings, args)

    async def body() -> None:
        try:
            await handler(ctx)
        finally:
            await ctx.close()

    return run_async(body())


def _event_loop_runner() -> Any:
    """uvloop where installed: 10-15 % less router CPU per streamed chunk
    (bench/overhead.py); plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


async def _run(role: str, settings: Settings) -> int:
    from proxy_router.runtime import ConfigurationError, run_router

    try:
        await run_router(role, settings)
    except ConfigurationError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0
