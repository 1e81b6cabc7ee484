"""Credentials never survive into a log line or an error text: URL keys, userinfo, tokens."""

from __future__ import annotations

import json
import logging

import structlog

from proxy_router.logs import configure_logging
from proxy_router.redact import redact_text, redact_url

KEY = "AbCdEf0123456789SeCrEtKeY"


def test_keys_in_the_path_query_and_userinfo_of_a_url_are_masked() -> None:
    assert redact_url(f"https://eth.example.com/v2/{KEY}") == "https://eth.example.com/v2/***"
    assert redact_url(f"https://u:{KEY}@rpc.example.com:8545/rpc?apikey={KEY}&x=1") == \
        "https://***@rpc.example.com:8545/rpc?apikey=***&x=***"
    assert redact_url(f"wss://base.example.io/ws/v3/{KEY}") == "wss://base.example.io/ws/v3/***"


def test_plain_endpoints_stay_readable() -> None:
    for url in ("http://127.0.0.1:8545", "https://rpc.example.com/mor-rpc/v1/chat/completions"):
        assert redact_url(url) == url


def test_an_aiohttp_error_text_quoting_the_url_is_redacted() -> None:
    text = (f"500, message='Internal Server Error', url='https://x.io/v2/{KEY}?key={KEY}'"
            f" Authorization: Bearer {KEY}")
    out = redact_text(text)
    assert KEY not in out and "https://x.io/v2/***?key=***" in out and "Bearer ***" in out


def test_every_log_line_is_redacted_tracebacks_included(capsys) -> None:
    configure_logging("info", "json")
    log = structlog.get_logger("test")
    try:
        raise ConnectionError(f"cannot reach https://rpc.example.com/v2/{KEY}")
    except ConnectionError as exc:
        log.exception("chain_failed", error=str(exc), url=f"https://h/v2/{KEY}")
    err = capsys.readouterr().err
    assert "chain_failed" in err and KEY not in err
    line = json.loads(err.strip().splitlines()[-1])
    assert line["url"] == "https://h/v2/***" and "Traceback" in line["exception"]
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()
