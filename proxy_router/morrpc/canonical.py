"""Canonical JSON: the exact bytes a MOR-RPC signature covers.

Signer and verifier must hash identical bytes although each (de)serialises the
frame with its own JSON library, so the encoding is pinned down:

* object keys sorted by Unicode code point (= UTF-8 byte order), no whitespace
  (separators ``,`` and ``:``), UTF-8 output with only the escapes JSON requires;
* values are ``null``, booleans, strings, arrays, objects and integers within
  ±(2**53 − 1) — the range every JSON parser (JavaScript included) keeps exact;
* floats (and NaN/Infinity) are refused: their text form differs between
  libraries. Amounts such as wei travel as decimal strings;
* ``bytes`` are encoded as lowercase ``0x``-hex strings, which is what the
  receiver sees after parsing, so the signature survives the round trip.
"""

from __future__ import annotations

import json
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1
_MAX_DEPTH = 64

_encode = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    sort_keys=True,
    separators=(",", ":"),
    default=lambda value: "0x" + value.hex(),  # only reached for bytes: _check ran first
).encode


class CanonicalJsonError(ValueError):
    """The value has no canonical form (float, huge int, non-string key, ...)."""


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` canonically; raise ``CanonicalJsonError`` when not representable."""
    _check(obj, 0)
    try:
        return _encode(obj).encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates cannot be UTF-8
        raise CanonicalJsonError("string is not valid Unicode") from exc


def _check(value: Any, depth: int) -> None:
    """Validate the whole tree before encoding (json.dumps has no hook for floats)."""
    if depth > _MAX_DEPTH:
        raise CanonicalJsonError("nesting too deep")
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, int):
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return
        raise CanonicalJsonError("integer beyond 2**53-1: send it as a decimal string")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJsonError(f"object key {key!r} is not a string")
            _check(item, depth + 1)
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check(item, depth + 1)
        return
    if isinstance(value, bytes):
        return
    if isinstance(value, float):
        raise CanonicalJsonError("floats are not allowed in signed data")
    raise CanonicalJsonError(f"type {type(value).__name__} has no canonical JSON form")
