"""Chain failures as exceptions a caller can act on.

A revert carries the decoded custom error (name + arguments) so callers and
users see ``StakeTooLow(required=..., given=...)`` rather than raw hex; a
connection failure is kept distinct because it is retryable and a revert is not.
"""

from __future__ import annotations

from typing import Any


class ChainError(Exception):
    """Base class of everything the chain layer raises."""


class ChainUnavailable(ChainError):
    """No RPC endpoint answered (connection refused, timeout, DNS)."""


class ContractReverted(ChainError):
    """A call or transaction reverted; ``error_name`` is the Solidity error."""

    def __init__(self, error_name: str, args: dict[str, Any] | None = None, *,
                 tx_hash: str | None = None) -> None:
        self.error_name = error_name
        self.error_args = dict(args or {})
        self.tx_hash = tx_hash
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        if not self.error_args:
            return self.error_name
        inner = ", ".join(f"{k}={_short(v)}" for k, v in self.error_args.items())
        return f"{self.error_name}({inner})"


class TransactionFailed(ChainError):
    """A transaction could not be sent or was dropped (not a revert)."""


def _short(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)
