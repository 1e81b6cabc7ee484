"""What the operator commands print: aligned tables, key/value blocks, ``--json``.

JSON follows the consumer API's conventions: camelCase keys (``chain/types.py``'s
``to_json``) and wei amounts as decimal strings, so no reader loses precision.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from proxy_router.chain.client import TxResult
from proxy_router.cli.units import fmt_eth

WEI_KEYS = frozenset({
    "stake", "pricePerSecond", "providerEarned", "userRefund", "held", "gasCostWei",
    "eth", "mor", "allowance", "paid", "claimable", "accruing", "amount", "earned",
    "providerMinStake", "modelMinStake", "bidFee", "claimableAmount", "providerShare",
    "userHeld", "providerHeld", "withdrawable", "onHold", "returned", "claimedAmount"})
"""Keys whose integer values are wei amounts (printed as decimal strings)."""


def wei_strings(value: Any) -> Any:
    """``value`` with every int under a ``WEI_KEYS`` key turned into a decimal string."""
    if isinstance(value, Mapping):
        return {k: (str(v) if k in WEI_KEYS and isinstance(v, int) and not isinstance(v, bool)
                    else wei_strings(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [wei_strings(v) for v in value]
    return value


def print_json(value: Any) -> None:
    json.dump(wei_strings(value), sys.stdout, indent=2)
    sys.stdout.write("\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str = "(none)"
          ) -> None:
    """Columns padded to their widest cell; ``empty`` alone when there are no rows."""
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        print(empty)
        return
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """``label  value`` lines with the values aligned."""
    width = max(len(label) for label, _ in pairs)
    for label, value in pairs:
        print(f"{label.ljust(width)}  {value}")


def when(timestamp: int) -> str:
    """Unix seconds as ``2025-01-31 12:00:00Z``; "-" for 0 (not set)."""
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def tx_line(tx: TxResult) -> str:
    return f"tx {tx.tx_hash} (gas {tx.gas_used}, cost {fmt_eth(tx.fee_wei)})"
