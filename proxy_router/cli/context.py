"""What every operator command runs with: the settings, the chain, one-line failures.

``Context`` connects lazily (a read needs no key; a write unlocks the wallet first,
before anything is sent) and closes what it opened. ``run_async`` turns every
expected failure into one line on stderr and an exit code: 1 for a failure
(a revert with its decoded reason, an unreachable chain or provider), 2 for bad
configuration. A key or password never appears in either.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_utils import is_address, to_checksum_address
from pydantic import ValidationError

from proxy_router.chain.client import ChainClient, TxResult
from proxy_router.chain.errors import ChainError, ChainUnavailable, ContractReverted
from proxy_router.chain.markets import Market, open_market
from proxy_router.chain.types import chain_now, same_address
from proxy_router.config import ConfigurationError, Settings, describe_error
from proxy_router.consumer.domain_errors import ConsumerError
from proxy_router.keystore import KeystoreError, keystore_address
from proxy_router.morrpc import RpcError, RpcUnavailable

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

RPC_TIMEOUT_S = 10.0

FLAVORS = {"native": "native (our Marketplace)",
           "morpheus": "morpheus (the Morpheus-Lumerin diamond)"}
"""``MARKETPLACE_FLAVOR`` as the commands print it."""


class CliError(Exception):
    """A problem worth one line to the user, not a traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def one_line(text: str) -> str:
    return " ".join(text.split())


def describe_failure(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, the line to print) for an expected failure; None for a bug."""
    if isinstance(exc, CliError):
        return exc.code, f"error: {one_line(str(exc))}"
    if isinstance(exc, ValidationError):
        return EXIT_CONFIG, describe_error(exc)
    if isinstance(exc, ConfigurationError):
        return EXIT_CONFIG, f"invalid configuration: {one_line(str(exc))}"
    if isinstance(exc, ContractReverted):
        return EXIT_FAILURE, f"error: transaction reverted: {exc.reason}"
    if isinstance(exc, ChainUnavailable):
        return EXIT_FAILURE, f"error: cannot reach the chain: {one_line(str(exc))}"
    if isinstance(exc, RpcError | RpcUnavailable):
        return EXIT_FAILURE, f"error: provider: {one_line(str(exc))}"
    if isinstance(exc, ChainError | ConsumerError | KeystoreError):
        return EXIT_FAILURE, f"error: {one_line(str(exc))}"
    return None


def run_async(body: Coroutine[Any, Any, None]) -> int:
    """Run a command's body; expected failures become one line on stderr."""
    try:
        asyncio.run(body)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        described = describe_failure(exc)
        if described is None:
            raise
        code, line = described
        print(line, file=sys.stderr)
        return code
    return EXIT_OK


def own_address(settings: Settings) -> str:
    """The wallet's address, read without unlocking a keystore where it says it."""
    if settings.wallet_private_key is None and settings.keystore_path is not None:
        declared = keystore_address(settings.keystore_path)
        if declared is not None and is_address(declared):
            return str(to_checksum_address(declared))
    return str(Account.from_key(settings.private_key).address)


def mor_received(tx: TxResult, account: str) -> int:
    """MOR that ``tx`` moved to ``account``: its token ``Transfer``s, which both flavours
    emit (the diamond has no ``ProviderClaimed`` or refund event of ours)."""
    return sum(int(args["value"]) for name, args in tx.events
               if name == "Transfer" and same_address(args["to"], account))


@dataclass
class Context:
    """One command's settings and the chain connections it opened."""

    settings: Settings
    args: argparse.Namespace
    _clients: list[ChainClient] = field(default_factory=list)

    @property
    def address(self) -> str:
        """This wallet's address (no password asked when the keystore declares it)."""
        return own_address(self.settings)

    async def client(self, *, sign: bool = False) -> ChainClient:
        """A connection to ``ETH_NODE_ADDRESS``; ``sign`` unlocks the wallet first."""
        key = self.settings.private_key if sign else None
        try:
            client = await ChainClient.connect(self.settings.eth_rpc_urls, key,
                                               chain_id=self.settings.eth_node_chain_id,
                                               timeout=RPC_TIMEOUT_S)
        except ChainUnavailable:
            raise
        except ChainError as exc:  # the wrong chain: the configuration's fault
            raise ConfigurationError(str(exc)) from None
        self._clients.append(client)
        return client

    async def market(self, *, sign: bool = False) -> Market:
        """The marketplace of ``MARKETPLACE_FLAVOR`` at ``MARKETPLACE_ADDRESS`` (the
        diamond, ``DIAMOND_CONTRACT_ADDRESS``, in the Morpheus flavour)."""
        addresses = self.settings.market_addresses()
        if sign:
            self.settings.private_key  # noqa: B018 -- unlock before connecting
        return open_market(await self.client(sign=sign), self.settings.marketplace_flavor,
                           *addresses)

    async def chain_now(self, market: Market) -> int:
        """The chain's "now": wall-clock seconds, never behind the latest block."""
        _, timestamp = await market.client.head()
        return chain_now(timestamp)

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
        self._clients.clear()
