"""Scrub credentials out of text before it is logged or leaves the router.

RPC providers put API keys in the URL (``https://x.alchemy.com/v2/<KEY>``,
``?apikey=<KEY>``, ``https://user:pass@host``) and aiohttp quotes the whole URL
in its exception text, so any ``str(exc)`` may carry one. ``redact_text`` keeps
scheme, host and port (what an operator needs to tell endpoints apart) and masks
userinfo, every query value and every path segment that looks like a token.
Bearer/Basic credentials are masked too. The structlog processor applies it to
every log line; peers and clients get generic messages in the first place.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

MASK = "***"
_URL = re.compile(r"\b(?:https?|wss?)://[^\s'\"<>()\[\]{},]+", re.IGNORECASE)
_AUTH = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]{1,11}|v\d{1,2}|\d{1,6}")
"""Path segments kept as they are: short words (``v2``, ``rpc``, ``mor-rpc``), small numbers."""


def _segment(segment: str) -> str:
    if not segment:
        return segment
    parts = re.split(r"([-_.])", segment)
    if all(p in "-_." or _WORD.fullmatch(p) for p in parts):
        return segment
    return MASK


def redact_url(url: str) -> str:
    """``url`` with userinfo, query values and token-like path segments masked."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    netloc = (f"{MASK}@" if "@" in parts.netloc else "") + (
        f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    path = "/".join(_segment(s) for s in parts.path.split("/"))
    query = "&".join(f"{kv.split('=', 1)[0]}={MASK}" if "=" in kv else MASK
                     for kv in parts.query.split("&")) if parts.query else ""
    return f"{parts.scheme}://{netloc}{path}" + (f"?{query}" if query else "") + (
        f"#{MASK}" if parts.fragment else "")


def redact_text(text: str) -> str:
    """Every URL in ``text`` redacted, and Authorization-style credentials masked."""
    if "://" in text:
        text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    if "earer" in text or "asic" in text:
        text = _AUTH.sub(lambda m: f"{m.group(1)} {MASK}", text)
    return text


def redact_value(value: Any) -> Any:
    """``redact_text`` over strings, recursively through dicts, lists and tuples."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value
