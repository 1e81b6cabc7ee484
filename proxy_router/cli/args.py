"""Argument parsing shared by the commands: the parser class and the value types."""

from __future__ import annotations

import argparse
import re
from typing import Any, NoReturn, TypeAlias

from eth_utils import is_address, to_checksum_address

_HEX64 = re.compile(r"(0x)?[0-9a-fA-F]{64}")
HEX32 = re.compile(r"^0x[0-9a-fA-F]{64}$")
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(?P<port>[0-9]{1,5})$")


class Parser(argparse.ArgumentParser):
    """No abbreviated options (``--key`` must not mean ``--keystore``), and usage errors
    that never echo a value which could be a private key: unrecognized arguments are
    named by their option names only, and 64-hex-digit strings are masked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        head, sep, rest = message.partition("unrecognized arguments: ")
        if sep:
            message = head + sep + " ".join(
                (t.partition("=")[0] + ("=…" if "=" in t else "")) if t.startswith("-")
                else "…" for t in rest.split())
        super().error(_HEX64.sub("0x…", message))


Commands: TypeAlias = "argparse._SubParsersAction[Parser]"


def address_arg(text: str) -> str:
    """argparse type: an address, checksummed."""
    if not is_address(text):
        raise argparse.ArgumentTypeError(f"not a 0x-prefixed 20-byte address: {text!r}")
    return str(to_checksum_address(text))


def id32_arg(text: str) -> str:
    """argparse type: a 32-byte id, 0x + 64 hex digits (returned lower-case)."""
    if not HEX32.match(text.strip()):
        raise argparse.ArgumentTypeError(f"not a 32-byte id (0x + 64 hex digits): {text!r}")
    return text.strip().lower()


def endpoint_arg(text: str) -> str:
    """argparse type: ``host:port`` a consumer can connect to (host required)."""
    m = _HOST_PORT.match(text.strip())
    if not m or not 0 < int(m["port"]) < 65536 or m["host"] in ("0.0.0.0", "[::]"):
        raise argparse.ArgumentTypeError(
            f"not a reachable host:port (e.g. provider.example.com:3333): {text!r}")
    return text.strip()
