"""JSON from untrusted bytes: capped in size and depth, never recursive in Python.

py_ecc (imported through eth-account) raises ``sys.setrecursionlimit`` to 100,000,
so the stdlib decoder, which recurses in C and trusts that limit, overflows the C
stack on ``"[" * 70000`` and kills the process. orjson parses in Rust with a fixed
nesting limit of 1024 (and is faster on the hot path), so every parse of bytes a
peer, a client or a backend sent goes through ``loads`` with a size cap chosen by
the caller. Local files we wrote ourselves (the store, artifacts) may use ``json``.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_DEPTH = 1024
"""orjson's nesting limit: deeper input raises ``InvalidJson``, it never recurses."""


class InvalidJson(ValueError):
    """Not JSON, or nested deeper than ``MAX_DEPTH``; the message never quotes the input."""


class JsonTooLarge(InvalidJson):
    """The input exceeds the caller's size cap (checked before parsing)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"JSON of {size} bytes exceeds the limit of {limit}")


def loads(data: bytes | bytearray | memoryview | str, *, max_bytes: int) -> Any:
    """Parse ``data`` (at most ``max_bytes`` long) or raise ``InvalidJson``.

    Integers beyond 64 bits come back as floats (orjson), which every caller that
    needs exact integers (canonical JSON, amounts as decimal strings) refuses anyway.
    """
    size = len(data)
    if size > max_bytes:
        raise JsonTooLarge(size, max_bytes)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        reason = str(exc).split(":", 1)[0]
        raise InvalidJson(f"invalid JSON ({reason})") from None


def restore_recursion_limit(limit: int = 10_000) -> None:
    """Undo py_ecc's 100,000: a recursion limit the C stack cannot honour turns a
    RecursionError into a segfault in any library that parses recursively (web3's
    JSON-RPC decoding included). Called once when ``proxy_router`` is imported."""
    import sys

    if sys.getrecursionlimit() > limit:
        sys.setrecursionlimit(limit)
