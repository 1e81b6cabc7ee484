"""Amounts: decimal MOR and ETH in, wei out; wei in, decimal text out (both 18 decimals)."""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation

WEI_PER_UNIT = 10**18


def parse_units(text: str, unit: str = "MOR") -> int:
    """ "0.2" or "10" (MOR or ETH) as wei; ``ValueError`` for anything else."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not a {unit} amount: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"not a {unit} amount: {text!r}")
    wei = value * WEI_PER_UNIT
    if wei != wei.to_integral_value():
        raise ValueError(f"not a {unit} amount with at most 18 decimals: {text!r}")
    return int(wei)


def mor_arg(text: str) -> int:
    """argparse type: a decimal MOR amount, as wei."""
    try:
        return parse_units(text, "MOR")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def wei_arg(text: str) -> int:
    """argparse type: a whole number of wei (> 0)."""
    if not text.strip().isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive whole number of wei: {text!r}")
    return int(text)


def decimal_text(wei: int) -> str:
    """18-decimal fixed point without trailing zeros: 200000000000000000 → "0.2"."""
    text = f"{Decimal(wei) / WEI_PER_UNIT:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def fmt_mor(wei: int) -> str:
    return f"{decimal_text(wei)} MOR"


def fmt_eth(wei: int) -> str:
    return f"{decimal_text(wei)} ETH"


def with_wei(wei: int, unit: str = "MOR") -> str:
    """ "0.2 MOR (200000000000000000 wei)" """
    return f"{decimal_text(wei)} {unit} ({wei} wei)"
