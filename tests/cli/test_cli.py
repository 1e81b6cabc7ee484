"""The proxy-router command: help, and one clear line with exit code 2 for bad config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy_router.dev.anvil import dev_key

GOOD = {
    "ETH_NODE_ADDRESS": "http://127.0.0.1:1",
    "WALLET_PRIVATE_KEY": dev_key(2),
    "MARKETPLACE_ADDRESS": "0x" + "11" * 20,
    "MOR_TOKEN_ADDRESS": "0x" + "22" * 20,
}


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy_router.cli", *args], cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, capture_output=True,
                          text=True, timeout=60)


def test_help_names_both_roles(tmp_path: Path):
    out = run_cli(tmp_path, "--help")
    assert out.returncode == 0
    assert "provider" in out.stdout and "consumer" in out.stdout and "--env-file" in out.stdout


@pytest.mark.parametrize(("var", "value", "expected"), [
    ("MARKETPLACE_ADDRESS", "0x1234", "MARKETPLACE_ADDRESS must be a 0x-prefixed"),
    ("WALLET_PRIVATE_KEY", "nope", "WALLET_PRIVATE_KEY must be a 32-byte hex private key"),
    ("ETH_NODE_ADDRESS", "ftp://x", "ETH_NODE_ADDRESS must be one or more"),
    ("WEB_ADDRESS", "localhost", "WEB_ADDRESS must be host:port"),
    ("SESSION_DURATION_S", "5", "SESSION_DURATION_S"),
    ("API_TOKEN", "short", "API_TOKEN must be at least 16 characters"),
    ("API_BASIC_AUTH", "no-colon", "API_BASIC_AUTH must be user:password"),
    ("CORS_ORIGINS", "*", "CORS_ORIGINS '*' is not an origin"),
    ("CORS_ORIGINS", "https://ok.example,https://x.example/path", "CORS_ORIGINS"),
])
def test_an_invalid_variable_is_named_with_exit_code_2_and_no_traceback(
        tmp_path: Path, var: str, value: str, expected: str):
    out = run_cli(tmp_path, "--role", "consumer", env={**GOOD, var: value})
    assert out.returncode == 2
    assert expected in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("address", ["0.0.0.0:8082", ":8082", "192.168.1.10:8082"])
def test_a_consumer_listening_beyond_loopback_without_a_credential_refuses_to_start(
        tmp_path: Path, address: str):
    # API_TOKEN= and API_BASIC_AUTH= left empty, as in .env.example, mean "not set".
    out = run_cli(tmp_path, "--role", "consumer", env={
        **GOOD, "WEB_ADDRESS": address, "API_TOKEN": "", "API_BASIC_AUTH": ""})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"invalid configuration: API_TOKEN (or API_BASIC_AUTH) is required when WEB_ADDRESS "
        f"({address}) is not a loopback address"]


def test_a_missing_variable_is_reported_as_required(tmp_path: Path):
    env = {k: v for k, v in GOOD.items() if k != "MOR_TOKEN_ADDRESS"}
    out = run_cli(tmp_path, "--role", "consumer", env=env)
    assert out.returncode == 2
    assert "MOR_TOKEN_ADDRESS is required" in out.stderr


def test_the_env_file_is_read_and_must_exist(tmp_path: Path):
    out = run_cli(tmp_path, "--role", "consumer", "--env-file", "missing.env")
    assert out.returncode == 2 and "missing.env does not exist" in out.stderr
    (tmp_path / "bad.env").write_text("".join(f"{k}={v}\n" for k, v in GOOD.items())
                                      + "MOR_TOKEN_ADDRESS=zzz\n")
    out = run_cli(tmp_path, "--role", "consumer", "--env-file", "bad.env")
    assert out.returncode == 2 and "MOR_TOKEN_ADDRESS" in out.stderr


def test_provider_without_models_config_is_a_configuration_error(tmp_path: Path):
    out = run_cli(tmp_path, "--role", "provider", env=GOOD)
    assert out.returncode == 2
    assert "MODELS_CONFIG_PATH (or MODELS_CONFIG_CONTENT) is required" in out.stderr
    assert "Traceback" not in out.stderr
