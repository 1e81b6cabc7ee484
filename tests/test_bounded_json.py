"""Untrusted JSON is parsed with a size and a depth bound, and never crashes the process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proxy_router import bounded_json


def test_a_nesting_bomb_is_invalid_json_not_a_crash() -> None:
    with pytest.raises(bounded_json.InvalidJson, match="invalid JSON"):
        bounded_json.loads("[" * 70_000 + "]" * 70_000, max_bytes=1 << 20)
    assert bounded_json.loads("[" * 1000 + "]" * 1000, max_bytes=1 << 20) is not None


def test_input_over_the_cap_is_refused_before_parsing() -> None:
    with pytest.raises(bounded_json.JsonTooLarge) as raised:
        bounded_json.loads(b'"' + b"x" * 100 + b'"', max_bytes=100)
    assert raised.value.size == 102 and raised.value.limit == 100


def test_the_error_never_quotes_the_input() -> None:
    with pytest.raises(bounded_json.InvalidJson) as raised:
        bounded_json.loads(b'{"secret": "hunter2"', max_bytes=100)
    assert "hunter2" not in str(raised.value)


def test_importing_the_package_undoes_py_eccs_recursion_limit() -> None:
    """py_ecc sets 100,000; with it the stdlib decoder segfaults on a bomb (exit -11)."""
    code = ("import eth_account, proxy_router, json, sys\n"
            "assert sys.getrecursionlimit() <= 10_000\n"
            "try:\n    json.loads('[' * 70000 + ']' * 70000)\n"
            "except RecursionError:\n    print('refused')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused"
