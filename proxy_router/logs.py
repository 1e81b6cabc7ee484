"""structlog set-up: console output in a terminal, JSON otherwise, secrets masked.

Two layers: values under secret-sounding keys are replaced whole, and every other
string (tracebacks included) has URL credentials and bearer tokens redacted, since
an exception's text may quote an RPC URL with its API key.

Context bound with ``structlog.contextvars`` (an HTTP request's ``request_id``)
joins every line logged while it is bound, background tasks started meanwhile too.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from typing import Any

import structlog
from structlog.typing import EventDict

from proxy_router.redact import redact_value

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:+/=-]{1,128}$"
"""A client's request id we echo and log: UUIDs, ``req_…``, trace ids, base64 fit;
anything longer, or with spaces, quotes or control characters, could forge log lines
or bloat them, and is replaced."""
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def request_id(given: str | None) -> str:
    """``given`` (a client's ``X-Request-Id``) when well-formed, else a fresh
    ``req_<32 hex>`` (OpenAI's shape)."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return "req_" + uuid.uuid4().hex


_SECRET_KEYS = ("private_key", "wallet_private_key", "secret", "password", "api_key",
                "apikey", "authorization", "token")


def _mask_secrets(_: Any, __: str, event: EventDict) -> EventDict:
    for key in list(event):
        if any(s in key.lower() for s in _SECRET_KEYS):
            event[key] = "***"
    return event


def _redact_strings(_: Any, __: str, event: EventDict) -> EventDict:
    for key, value in event.items():
        if isinstance(value, str | dict | list | tuple | BaseException):
            event[key] = redact_value(value)
    return event


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (structlog.processors.JSONRenderer() if use_json
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    for noisy in ("web3", "urllib3", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            structlog.processors.format_exc_info,
            _redact_strings,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
