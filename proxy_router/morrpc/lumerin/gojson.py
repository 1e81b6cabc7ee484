"""Go ``encoding/json`` emulation: the bytes a Lumerin MOR-RPC signature covers.

The reference signs ``keccak256(json.Marshal(params))`` of a Go struct and its
verifier re-marshals the struct it decoded, so signer and verifier must agree on
Go's output byte for byte:

* struct fields in declaration order under their ``json`` tag names, no spaces;
* ``omitempty`` drops empty strings, zero numbers, ``false`` and zero-length slices
  (an empty ``lib.HexString`` is omitted *before* its ``MarshalJSON`` runs);
* strings escaped as Go does with HTML escaping on: ``"`` ``\\`` ``\\b`` ``\\f``
  ``\\n`` ``\\r`` ``\\t`` short forms, other C0 controls and ``<`` ``>`` ``&`` as
  ``\\u00XX`` (lower-case hex), U+2028/U+2029 escaped, DEL and all other
  non-ASCII characters written as UTF-8; a lone surrogate (Go: invalid UTF-8 after
  decoding) becomes U+FFFD;
* ``lib.HexString`` → ``"0x" + lower-case hex`` (``"0x"`` when empty);
  ``common.Address`` / ``common.Hash`` → lower-case ``0x`` hex (``MarshalText`` via
  hexutil — *not* the EIP-55 checksum); ``lib.BigInt`` → a decimal *string*;
  ``uint64``/``int`` → decimal numbers.

Decoding mirrors what Go accepts where Go senders depend on it (unknown fields
ignored, ``lib.HexString`` with or without ``0x`` and odd-length left-padded,
``lib.BigInt`` as string or number), and is stricter where Go would be sloppy
(no non-string hex, no floats, bounded lengths, "required" enforced).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Self

from eth_utils.address import to_checksum_address

from ..errors import ErrorCode, RpcError

_UINT64_MAX = 2**64 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT32_MAX = 2**32 - 1

_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
    "\t": "\\t", "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
    "\u2028": "\\u2028", "\u2029": "\\u2029",
}
_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')
_HEX_TEXT = re.compile(r"(0[xX])?[0-9a-fA-F]+")  # lib.HexString's hexadecimalRegex
_FIXED_HEX = re.compile(r"0[xX][0-9a-fA-F]*")
_DECIMAL = re.compile(r"[0-9]+")


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if "\ud800" <= ch <= "\udfff":
        return "\ufffd"
    return f"\\u{ord(ch):04x}"


def go_string(value: str) -> str:
    """``value`` as Go's ``json.Marshal`` writes a string (quotes included)."""
    return '"' + _NEEDS_ESCAPE.sub(_escape, value) + '"'


def go_marshal(value: Any) -> str:
    """Go's ``json.Marshal`` of a plain value (``map[string]any`` keys sorted, as Go does).

    Floats are refused: Go's float formatting is not Python's, and nothing signed
    here carries one.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return go_string(value)
    if isinstance(value, Mapping):
        items = sorted(value.items())
        return "{" + ",".join(go_string(str(k)) + ":" + go_marshal(v) for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_marshal(v) for v in value) + "]"
    raise TypeError(f"go_marshal cannot encode {type(value).__name__}")


class Kind(Enum):
    """Go field types of the reference's message structs."""

    HEX = "lib.HexString"
    ADDRESS = "common.Address"
    HASH = "common.Hash"
    BIGINT = "lib.BigInt"
    UINT64 = "uint64"
    UINT32 = "uint32"
    INT = "int"
    STRING = "string"
    BOOL = "bool"
    STRUCT = "struct"


@dataclass(frozen=True, slots=True)
class Field:
    """One struct field: its json tag, Python attribute, Go type and limits."""

    tag: str
    attr: str
    kind: Kind
    omitempty: bool = False
    required: bool = True
    max_len: int = 1 << 20
    """Longest value accepted when decoding: bytes for hex, characters for strings."""
    struct: type[GoStruct] | None = None


_ZERO: dict[Kind, Any] = {
    Kind.HEX: b"", Kind.ADDRESS: "", Kind.HASH: "", Kind.BIGINT: 0, Kind.UINT64: 0,
    Kind.UINT32: 0, Kind.INT: 0, Kind.STRING: "", Kind.BOOL: False,
}


def bad(message: str) -> RpcError:
    """The one exception a malformed message raises."""
    return RpcError(ErrorCode.BAD_REQUEST, message)


class GoStruct:
    """A reference message struct: Go-exact encoding, validated decoding, signing.

    Subclasses are frozen dataclasses whose ``FIELDS`` list the Go struct's fields
    in declaration order. ``SIGNATURE`` names the attribute holding the message
    signature (``None``: the struct is not signed itself).
    """

    __slots__ = ()
    FIELDS: ClassVar[tuple[Field, ...]]
    SIGNATURE: ClassVar[str | None] = "signature"

    def go_json(self) -> bytes:
        """Exactly the bytes Go's ``json.Marshal`` produces for this struct."""
        return self._go_text().encode("utf-8")

    def _go_text(self) -> str:
        parts = []
        for f in self.FIELDS:
            value = getattr(self, f.attr)
            if f.omitempty and _is_empty(f.kind, value):
                continue
            parts.append(go_string(f.tag) + ":" + _encode(f, value))
        return "{" + ",".join(parts) + "}"

    # -- signatures ---------------------------------------------------------------
    def get_signature(self) -> bytes:
        """The message signature (65 bytes r‖s‖v, v ∈ {0, 1}); ``b""`` if unsigned."""
        if self.SIGNATURE is None:
            raise TypeError(f"{type(self).__name__} is not signed")
        sig: bytes = getattr(self, self.SIGNATURE)
        return sig

    def with_signature(self, signature: bytes) -> Self:
        """A copy carrying ``signature``."""
        if self.SIGNATURE is None:
            raise TypeError(f"{type(self).__name__} is not signed")
        values = {f.attr: getattr(self, f.attr) for f in self.FIELDS}
        values[self.SIGNATURE] = signature
        return type(self)(**values)

    def signing_input(self) -> bytes:
        """What the reference hashes: the struct marshalled with its signature emptied.

        Go's signer marshals before setting the field (nil slice) and its verifier
        sets it to ``lib.HexString{}`` before re-marshalling: both are length 0, so
        an ``omitempty`` signature vanishes and a plain one reads ``"0x"``.
        """
        return self.with_signature(b"").go_json()

    # -- decoding -----------------------------------------------------------------
    @classmethod
    def from_obj(cls, obj: Any) -> Self:
        """Decode a parsed JSON object as Go would, then enforce ``validate:"required"``."""
        name = cls.__name__
        if not isinstance(obj, dict):
            raise bad(f"{name} must be a JSON object")
        values: dict[str, Any] = {}
        for f in cls.FIELDS:
            raw = obj.get(f.tag)
            if raw is None and f.kind in (Kind.STRING, Kind.UINT64, Kind.UINT32, Kind.INT,
                                          Kind.BOOL, Kind.STRUCT):
                value = _zero(f)  # Go: a missing field or null leaves the zero value
            elif raw is None and f.tag not in obj:
                value = _zero(f)
            else:
                value = _decode(name, f, raw)
            if f.required and _is_empty(f.kind, value):
                raise bad(f"{name}.{f.tag} is required")
            values[f.attr] = value
        return cls(**values)


def _zero(f: Field) -> Any:
    if f.kind is Kind.STRUCT:
        assert f.struct is not None
        return f.struct.from_obj({})
    return _ZERO[f.kind]


def _is_empty(kind: Kind, value: Any) -> bool:
    if kind is Kind.STRUCT:
        return False  # Go never omits a struct value
    if kind in (Kind.ADDRESS, Kind.HASH):
        return not value or int(value, 16) == 0  # validator "required": non-zero array
    return not value


def _encode(f: Field, value: Any) -> str:
    kind = f.kind
    if kind is Kind.HEX:
        return '"0x' + bytes(value).hex() + '"'
    if kind is Kind.ADDRESS:
        return '"' + (value.lower() if value else "0x" + "00" * 20) + '"'
    if kind is Kind.HASH:
        return '"' + (value.lower() if value else "0x" + "00" * 32) + '"'
    if kind is Kind.BIGINT:
        return '"' + str(int(value)) + '"'
    if kind in (Kind.UINT64, Kind.UINT32, Kind.INT):
        return str(int(value))
    if kind is Kind.STRING:
        return go_string(value)
    if kind is Kind.BOOL:
        return "true" if value else "false"
    struct: GoStruct = value
    return struct._go_text()


def _decode(name: str, f: Field, raw: Any) -> Any:
    where = f"{name}.{f.tag}"
    kind = f.kind
    if kind is Kind.HEX:
        return decode_hex(raw, where, f.max_len)
    if kind is Kind.ADDRESS:
        return to_checksum_address(_fixed_hex(raw, where, 20))
    if kind is Kind.HASH:
        return _fixed_hex(raw, where, 32).lower()
    if kind is Kind.BIGINT:
        if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
            return raw
        if isinstance(raw, str) and _DECIMAL.fullmatch(raw) and len(raw) <= 78:
            return int(raw)
        raise bad(f"{where} must be a non-negative decimal integer string")
    if kind in (Kind.UINT64, Kind.UINT32, Kind.INT):
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise bad(f"{where} must be an integer")
        low, high = {Kind.UINT64: (0, _UINT64_MAX), Kind.UINT32: (0, _UINT32_MAX),
                     Kind.INT: (_INT64_MIN, _INT64_MAX)}[kind]
        if not low <= raw <= high:
            raise bad(f"{where} is out of range for {kind.value}")
        return raw
    if kind is Kind.STRING:
        if not isinstance(raw, str):
            raise bad(f"{where} must be a string")
        if len(raw) > f.max_len:
            raise bad(f"{where} is longer than {f.max_len} characters")
        return raw
    if kind is Kind.BOOL:
        if not isinstance(raw, bool):
            raise bad(f"{where} must be a boolean")
        return raw
    assert f.struct is not None
    return f.struct.from_obj(raw)


def decode_hex(raw: Any, where: str, max_bytes: int) -> bytes:
    """``lib.HexString`` from JSON: ``""`` is empty, ``0x`` optional, odd length left-padded."""
    if not isinstance(raw, str):
        raise bad(f"{where} must be a hex string")
    if raw == "":
        return b""
    if len(raw) > 2 * max_bytes + 3 or not _HEX_TEXT.fullmatch(raw):
        raise bad(f"{where} is not a hex string of at most {max_bytes} bytes")
    digits = raw[2:] if raw[:2] in ("0x", "0X") else raw
    if len(digits) % 2:
        digits = "0" + digits
    return bytes.fromhex(digits)


def _fixed_hex(raw: Any, where: str, size: int) -> str:
    """hexutil.UnmarshalFixedJSON: a string, ``0x`` prefix required, exactly ``size`` bytes."""
    if not isinstance(raw, str) or not _FIXED_HEX.fullmatch(raw) or len(raw) != 2 + 2 * size:
        raise bad(f"{where} must be 0x-prefixed hex of {size} bytes")
    return "0x" + raw[2:]
