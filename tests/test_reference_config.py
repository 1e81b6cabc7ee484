"""The reference router's configuration loads here: its ``.env`` names (read as ours,
mapped onto ours, or named in one start-up warning), Go durations, and the Morpheus
network presets. The reference is the Morpheus-Lumerin Go proxy-router; what is below
is its configuration data (variable names and example values), not its code."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from eth_utils import to_checksum_address
from pydantic import SecretStr, ValidationError
from structlog.testing import capture_logs

from proxy_router.config import (
    REFERENCE_IGNORED,
    ConfigurationError,
    Settings,
    describe_error,
    load_settings,
    parse_duration,
    warn_ignored_reference_settings,
)
from proxy_router.networks import NETWORKS, network_of_diamond
from proxy_router.provider.models_config import load_configured_models

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_DIAMOND = "0x6aBE1d282f72B474E54527D93b979A4f64d3030a"
BASE_MOR = "0x7431aDa8a591C955a994a21710752EF9b882b8e3"
SEPOLIA_DIAMOND = "0x6e4d0B775E3C3b02683A6F277Ac80240C4aFF930"
OTHER = "0x" + "33" * 20

# The models of the reference's proxy-router/.env.example (MODELS_CONFIG_CONTENT).
_KEY = "FILL_ME_IN"
REFERENCE_MODELS: dict[str, Any] = {
    "$schema": "./internal/config/models-config-schema.json",
    "models": [
        {"modelId": "0x" + "0" * 64, "modelName": "llama2", "apiType": "openai",
         "apiUrl": "http://localhost:8080/v1"},
        {"modelId": "0x" + "0" * 63 + "1", "modelName": "inference.sdxl.txt2img.v1",
         "apiType": "prodia-v2", "apiUrl": "https://inference.prodia.com/v2", "apiKey": _KEY},
        {"modelId": "0x" + "0" * 63 + "2", "modelName": "SDXL1.0-base",
         "apiType": "hyperbolic-sd", "apiUrl": "https://api.hyperbolic.xyz/v1", "apiKey": _KEY,
         "parameters": {"cfg_scale": "5", "steps": "30"}},
        {"modelId": "0x" + "0" * 63 + "3", "modelName": "claude-3-5-sonnet-20241022",
         "apiType": "claudeai", "apiUrl": "https://api.anthropic.com/v1", "apiKey": _KEY},
        {"modelId": "0x" + "0" * 63 + "4", "modelName": "inference.sd15.txt2img.v1",
         "apiType": "prodia-v2", "apiUrl": "https://inference.prodia.com/v2", "apiKey": _KEY},
        {"modelId": "0x" + "0" * 63 + "5", "modelName": "gpt-4o-mini", "apiType": "openai",
         "apiUrl": "https://api.openai.com/v1", "apiKey": _KEY},
    ],
}
_MODELS_LINE = "MODELS_CONFIG_CONTENT='" + json.dumps(REFERENCE_MODELS,
                                                      separators=(",", ":")) + "'"

# proxy-router/.env.example of the reference (at 04e6c425), line for line.
REFERENCE_ENV_EXAMPLE = """\
# Minimalist ENV File to enable the proxy-router to run, defaults to MAINNET
# Contract and Token current as of 1/15/2025
# Full ENV details can be found in /docs/proxy-router.full.env 
# Includes both TestNet and MainNet values, uncomment sections as desired

WALLET_PRIVATE_KEY=

# DOCKER
DOCKER_HOST=unix:///var/run/docker.sock
DOCKER_API_VERSION=
DOCKER_CERT_PATH=
DOCKER_TLS_VERIFY=

# MAINNET VALUES - BASE Mainnet (only MAINNET or TESTNET section should be uncommented)
DIAMOND_CONTRACT_ADDRESS=0x6aBE1d282f72B474E54527D93b979A4f64d3030a
MOR_TOKEN_ADDRESS=0x7431ada8a591c955a994a21710752ef9b882b8e3
BLOCKSCOUT_API_URL="https://base.blockscout.com/api/v2"
ETH_NODE_CHAIN_ID=8453
ENVIRONMENT=production

# TESTNET VALUES - BASE Sepolia
# DIAMOND_CONTRACT_ADDRESS=0x6e4d0B775E3C3b02683A6F277Ac80240C4aFF930
# MOR_TOKEN_ADDRESS=0x5C80Ddd187054E1E4aBBfFCD750498e81d34FfA3
# BLOCKSCOUT_API_URL="https://base-sepolia.blockscout.com/api/v2"
# ETH_NODE_CHAIN_ID=84532
# ENVIRONMENT=development

# COMMON
AUTH_CONFIG_FILE_PATH=./proxy.conf
AGENTS_CONFIG_PATH=./agents-config.json
COOKIE_CONTENT=admin:admin
COOKIE_FILE_PATH=./.cookie
PROXY_ADDRESS=0.0.0.0:3333
WEB_ADDRESS=0.0.0.0:8082
WEB_PUBLIC_URL=http://localhost:8082
@MODELS@
MODELS_CONFIG_PATH=
RATING_CONFIG_PATH=
ETH_NODE_USE_SUBSCRIPTIONS=false
ETH_NODE_ADDRESS=
ETH_NODE_LEGACY_TX=false
PROXY_STORE_CHAT_CONTEXT=true
PROXY_STORAGE_PATH=./data/
LOG_COLOR=true

# OPTIONAL 
# Log Levels: error, warn, info, debug 
LOG_LEVEL_APP=warn
LOG_LEVEL_TCP=warn
LOG_LEVEL_ETH_RPC=warn
LOG_LEVEL_STORAGE=warn

# LLM Timeout: max duration for PNode to LLM requests (streaming and non-streaming)
# Default: 4m (240 seconds). Supports Go duration strings: 30s, 5m, 1h, etc.
LLM_TIMEOUT=4m

# CNode to PNode timeout: per-attempt timeout waiting for PNode first response
# Default: 90s. Supports Go duration strings: 30s, 5m, etc.
CNODE_PNODE_TIMEOUT=90s
#
# Max retries for chat/embeddings (total budget = timeout * retries, default: 90s * 3 = 4.5 min)
CNODE_PNODE_MAX_RETRIES=3
#
# Max retries for audio transcription/speech (default: 90s * 20 = 30 min)
CNODE_PNODE_AUDIO_MAX_RETRIES=20

TEE_IMAGE_REPO=ghcr.io/morpheusais/morpheus-lumerin-node-tee
TEE_PORTAL_URL=https://secretai.scrtlabs.com/api/quote-parse
""".replace("@MODELS@", _MODELS_LINE)  # noqa: W291 -- trailing blanks are the reference's

# What that file sets and this router has no use for.
EXAMPLE_IGNORED = [
    "AGENTS_CONFIG_PATH", "AUTH_CONFIG_FILE_PATH", "BLOCKSCOUT_API_URL",
    "CNODE_PNODE_AUDIO_MAX_RETRIES", "CNODE_PNODE_MAX_RETRIES", "DOCKER_HOST", "ENVIRONMENT",
    "LOG_COLOR", "LOG_LEVEL_ETH_RPC", "LOG_LEVEL_STORAGE", "LOG_LEVEL_TCP",
    "PROXY_STORE_CHAT_CONTEXT", "TEE_IMAGE_REPO", "TEE_PORTAL_URL"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of ours or of the reference from the test runner's environment, and
    a fresh working directory (the reference's paths are relative: ./.cookie)."""
    names = set(REFERENCE_IGNORED) | {"PROVIDER_ALLOW_LIST", "LLM_TIMEOUT",
                                      "CNODE_PNODE_TIMEOUT"}
    names |= {name.upper() for name in Settings.model_fields}
    for key in list(os.environ):
        if key.upper() in names:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "reference.env"
    path.write_text(text)
    return path


def test_the_reference_env_example_loads_as_it_is(tmp_path: Path) -> None:
    s = load_settings(env_file(tmp_path, REFERENCE_ENV_EXAMPLE))
    # The diamond makes it the morpheus flavour, and names BASE (the .env has no NETWORK).
    assert (s.marketplace_flavor, s.network, s.eth_node_chain_id) == ("morpheus", "base", 8453)
    assert s.market_addresses() == (BASE_DIAMOND, BASE_MOR)
    assert s.diamond_contract_address == BASE_DIAMOND
    base = NETWORKS["base"]
    assert (s.eth_node_confirmations, s.eth_node_polling_interval, s.eth_node_start_block) == (
        base.confirmations, base.polling_interval_s, base.start_block)
    # Its names that are ours, and the ones mapped onto ours.
    assert (s.proxy_address, s.web_address, s.proxy_storage_path) == (
        "0.0.0.0:3333", "0.0.0.0:8082", Path("data"))
    assert s.eth_node_address == "http://127.0.0.1:8545", "ETH_NODE_ADDRESS= is unset"
    assert s.wallet_private_key is None and s.models_config_path is None
    assert (s.backend_timeout_s, s.first_token_timeout_s) == (240.0, 90.0)
    assert s.log_level == "warning", "LOG_LEVEL_APP=warn"
    assert s.api_basic_auth is not None and s.api_basic_auth.get_secret_value() == "admin:admin"
    assert s.consumer_problem() is None, "the cookie is the credential WEB_ADDRESS needs"
    assert "admin:admin" not in repr(s) and _KEY not in repr(s)
    models = load_configured_models(s.models_config_path, s.models_config_content)
    assert [m.model_name for m in models.models] == ["llama2", "gpt-4o-mini"]
    assert s.ignored_reference_settings() == EXAMPLE_IGNORED


def test_the_ignored_names_are_one_warning_with_names_only(tmp_path: Path) -> None:
    s = load_settings(env_file(tmp_path, REFERENCE_ENV_EXAMPLE))
    with capture_logs() as logs:
        names = warn_ignored_reference_settings(s)
    assert names == EXAMPLE_IGNORED
    assert logs == [{"event": "reference_settings_ignored", "log_level": "warning",
                     "names": EXAMPLE_IGNORED, "see": "docs/configuration.md"}]
    for value in ("production", "unix:///var/run/docker.sock", "admin", "./proxy.conf"):
        assert value not in repr(logs)
    with capture_logs() as logs:
        assert warn_ignored_reference_settings(settings()) == []
    assert logs == [], "nothing to say, nothing said"


def test_reference_names_count_from_the_environment_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTRACT_MNEMONIC", "test test test junk")
    monkeypatch.setenv("IPFS_MULTADDR", "/ip4/127.0.0.1/tcp/5001")
    s = settings()
    assert s.ignored_reference_settings() == ["CONTRACT_MNEMONIC", "IPFS_MULTADDR"]
    assert "junk" not in repr(s._reference_seen), "a value not needed is not kept"


@pytest.mark.parametrize(("values", "ignored"), [
    ({"ETH_NODE_USE_SUBSCRIPTIONS": "false", "ETH_NODE_LEGACY_TX": "false"}, []),
    ({"ETH_NODE_USE_SUBSCRIPTIONS": "true", "ETH_NODE_LEGACY_TX": "true"},
     ["ETH_NODE_LEGACY_TX", "ETH_NODE_USE_SUBSCRIPTIONS"]),
    ({"SYS_ENABLE": "false", "SYS_SOMAXCONN": "100000", "SYS_RLIMIT_SOFT": "524288"}, []),
    ({"SYS_ENABLE": "true", "SYS_SOMAXCONN": "100000"}, ["SYS_ENABLE", "SYS_SOMAXCONN"]),
    ({"IPFS_DISABLED": "true"}, []),
    ({"IPFS_DISABLED": "false"}, ["IPFS_DISABLED"]),
    ({"PROXY_STORE_CHAT_CONTEXT": "false", "APP_RESET_KEYCHAIN": "false"}, []),
    ({"WEB_PUBLIC_URL": "http://localhost:8082"}, []),
    ({"WEB_PUBLIC_URL": "https://provider.example.com"}, ["WEB_PUBLIC_URL"]),
])  # fmt: skip
def test_a_value_that_is_already_ours_is_not_warned_about(
        tmp_path: Path, values: dict[str, str], ignored: list[str]) -> None:
    text = "".join(f"{k}={v}\n" for k, v in values.items())
    assert load_settings(env_file(tmp_path, text)).ignored_reference_settings() == ignored


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("1.5h", 5400.0),
    ("2h45m", 9900.0), ("300us", 0.0003), ("1\u00b5s", 1e-6), ("4m", 240.0), ("0", 0.0),
    ("10", 10.0), ("0.25", 0.25), (" 5s ", 5.0), ("-1s", -1.0)])
def test_go_durations_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10 s", "s", "1d", "1m30", "abc", "inf", "nan", "1e3"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_every_duration_setting_takes_go_durations(tmp_path: Path) -> None:
    text = ("ETH_NODE_POLLING_INTERVAL=10s\nSESSION_DURATION_S=1h\nSESSION_IDLE_TIMEOUT_S=15m\n"
            "BACKEND_TIMEOUT_S=4m\nHTTP_HEADER_TIMEOUT_S=2500ms\nPROVIDER_CLOSE_GRACE_S=90\n"
            "MOR_RPC_REPLAY_WINDOW_S=1m30s\nSTREAM_STALL_TIMEOUT_S=0.5\n")
    s = load_settings(env_file(tmp_path, text))
    assert (s.eth_node_polling_interval, s.session_duration_s, s.session_idle_timeout_s) == (
        10.0, 3600, 900)
    assert (s.backend_timeout_s, s.http_header_timeout_s, s.provider_close_grace_s) == (
        240.0, 2.5, 90)
    assert (s.mor_rpc_replay_window_s, s.stream_stall_timeout_s) == (90.0, 0.5)


def test_a_bad_duration_names_the_variable_as_written(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        load_settings(env_file(tmp_path, "LLM_TIMEOUT=soon\n"))
    assert describe_error(info.value).startswith(
        "invalid configuration: BACKEND_TIMEOUT_S (LLM_TIMEOUT) 'soon' is not a duration")
    with pytest.raises(ValidationError, match="fractional"):
        settings(session_duration_s="10m0.5s")
    with pytest.raises(ValidationError):
        settings(eth_node_polling_interval="2m")  # above the 60 s bound, as 120 would be


def test_our_names_win_over_the_reference_ones(tmp_path: Path) -> None:
    text = ("BACKEND_TIMEOUT_S=30\nLLM_TIMEOUT=4m\nLOG_LEVEL=error\nLOG_LEVEL_APP=debug\n"
            "LOG_FORMAT=console\nLOG_JSON=true\nAPI_BASIC_AUTH=me:mine\nCOOKIE_CONTENT=admin:x\n"
            f"PROVIDER_ALLOWLIST={OTHER}\nPROVIDER_ALLOW_LIST=0x{'44' * 20}\n")
    s = load_settings(env_file(tmp_path, text))
    assert (s.backend_timeout_s, s.log_level, s.log_format) == (30.0, "error", "console")
    assert s.api_basic_auth is not None and s.api_basic_auth.get_secret_value() == "me:mine"
    assert s.allowlist == {to_checksum_address(OTHER)}


def test_reference_logging_and_allowlist_names_map_onto_ours(tmp_path: Path) -> None:
    text = f"LOG_LEVEL_APP=fatal\nLOG_JSON=true\nPROVIDER_ALLOW_LIST={OTHER}\n"
    s = load_settings(env_file(tmp_path, text))
    assert (s.log_level, s.log_format) == ("error", "json")
    assert s.allowlist == {to_checksum_address(OTHER)}
    assert settings(log_level="warn").log_level == "warning"
    with pytest.raises(ValidationError) as info:
        load_settings(env_file(tmp_path, "LOG_LEVEL_APP=loud\n"))
    assert describe_error(info.value).startswith("invalid configuration: LOG_LEVEL_APP must be")


def test_the_cookie_file_wins_over_cookie_content(tmp_path: Path) -> None:
    cookie = tmp_path / ".cookie"
    cookie.write_text("admin:from-the-file\n")
    s = settings(cookie_file_path=cookie, cookie_content=SecretStr("admin:from-content"))
    assert s.api_basic_auth is not None
    assert s.api_basic_auth.get_secret_value() == "admin:from-the-file"
    missing = settings(cookie_file_path=tmp_path / "none", cookie_content="admin:content")
    assert missing.api_basic_auth is not None
    assert missing.api_basic_auth.get_secret_value() == "admin:content"
    cookie.write_text("no-colon-secret\n")
    with pytest.raises(ValidationError) as info:
        settings(cookie_file_path=cookie)
    assert "COOKIE_FILE_PATH must hold user:password" in str(info.value)
    assert "no-colon-secret" not in str(info.value)


def test_a_rating_config_gives_its_allowlist_and_its_weights_are_named(tmp_path: Path) -> None:
    path = tmp_path / "rating-config.json"
    path.write_text(json.dumps({
        "$schema": "./internal/rating/rating-config-schema.json", "algorithm": "default",
        "providerAllowlist": [OTHER],
        "params": {"weights": {"tps": 0.24, "ttft": 0.08, "duration": 0.24, "success": 0.32,
                               "stake": 0.12}}}))
    s = settings(rating_config_path=path)
    assert s.allowlist == {to_checksum_address(OTHER)}
    assert s.ignored_reference_settings() == ["RATING_CONFIG_PATH"]
    path.write_text(json.dumps({"algorithm": "default", "providerAllowlist": ["nope"]}))
    with pytest.raises(ValidationError, match="providerAllowlist"):
        settings(rating_config_path=path)
    assert settings(rating_config_path=tmp_path / "absent.json").allowlist == set()


@pytest.mark.parametrize("name", ["base", "base-sepolia", "arbitrum", "arbitrum-sepolia"])
def test_a_morpheus_preset_needs_only_an_rpc_url_and_a_key(name: str) -> None:
    preset = NETWORKS[name]
    s = settings(network=name, eth_node_address="https://rpc.example", wallet_private_key="11" * 32)
    assert s.marketplace_flavor == "morpheus" and preset.flavor == "morpheus"
    assert preset.diamond_address is not None and preset.mor_token_address is not None
    assert s.market_addresses() == (preset.diamond_address, preset.mor_token_address)
    assert s.market_addresses() == tuple(map(to_checksum_address, s.market_addresses()))
    assert s.eth_node_start_block == preset.start_block and preset.start_block
    assert s.eth_node_chain_id == preset.chain_id
    assert network_of_diamond(preset.diamond_address.lower()) is preset


def test_arbitrum_one_is_arbitrum_and_local_stays_native() -> None:
    s = settings(network="arbitrum-one")
    assert (s.network, s.eth_node_chain_id, s.marketplace_flavor) == ("arbitrum", 42161, "morpheus")
    local = settings(network="local")
    assert (local.marketplace_flavor, local.marketplace_address, local.eth_node_start_block) == (
        "native", None, None)


def test_the_preset_fills_only_what_the_user_did_not_set() -> None:
    s = settings(network="base", mor_token_address=OTHER, eth_node_start_block=7)
    assert s.market_addresses() == (BASE_DIAMOND, to_checksum_address(OTHER))
    assert s.eth_node_start_block == 7
    own = settings(network="base", diamond_contract_address=OTHER)
    assert own.market_addresses()[0] == to_checksum_address(OTHER)
    assert own.eth_node_start_block is None, "the preset's start is its own diamond's only"
    assert settings(network="base", marketplace_address=BASE_DIAMOND,
                    marketplace_flavor="morpheus").diamond_contract_address == BASE_DIAMOND


def test_our_own_contracts_on_a_morpheus_network_stay_native(tmp_path: Path) -> None:
    s = settings(network="base", marketplace_address=OTHER, mor_token_address=OTHER)
    assert s.marketplace_flavor == "native" and s.eth_node_start_block is None
    assert s.market_addresses() == (to_checksum_address(OTHER),) * 2
    explicit = settings(network="base-sepolia", marketplace_flavor="native")
    assert (explicit.marketplace_address, explicit.eth_node_chain_id) == (None, 84532)
    with pytest.raises(ConfigurationError, match="MARKETPLACE_ADDRESS and MOR_TOKEN_ADDRESS"):
        explicit.market_addresses()


def test_contradictions_are_refused() -> None:
    with pytest.raises(ValidationError, match="is the base diamond, but NETWORK is base-sepolia"):
        settings(network="base-sepolia", diamond_contract_address=BASE_DIAMOND)
    with pytest.raises(ValidationError, match="differ"):
        settings(diamond_contract_address=BASE_DIAMOND, marketplace_address=SEPOLIA_DIAMOND)
    with pytest.raises(ValidationError, match="MARKETPLACE_FLAVOR=morpheus"):
        settings(marketplace_flavor="native", diamond_contract_address=BASE_DIAMOND)
    # A fork on anvil keeps the diamond under another chain id: no preset, no refusal.
    fork = settings(diamond_contract_address=BASE_DIAMOND, eth_node_chain_id=31337)
    assert (fork.network, fork.eth_node_start_block) == (None, None)
    assert settings(network="local", diamond_contract_address=BASE_DIAMOND).network == "local"


def test_the_morpheus_flavour_names_the_diamond_when_missing() -> None:
    with pytest.raises(ConfigurationError, match="DIAMOND_CONTRACT_ADDRESS and MOR_TOKEN"):
        settings(marketplace_flavor="morpheus").market_addresses()


def test_a_deployment_of_the_reference_contracts_is_the_morpheus_flavour(tmp_path: Path) -> None:
    path = tmp_path / "morpheus.json"
    path.write_text(json.dumps({"chain_id": 31337, "diamond": OTHER, "mor": BASE_MOR,
                                "deploy_block": 3, "diamond_block": 5}))
    s = settings(deployment_file=path)
    assert s.marketplace_flavor == "morpheus"
    assert s.market_addresses() == (to_checksum_address(OTHER), BASE_MOR)
    assert (s.eth_node_start_block, s.eth_node_chain_id) == (3, 31337)
    with pytest.raises(ValidationError, match="describes a morpheus deployment"):
        settings(deployment_file=path, marketplace_flavor="native")


def test_this_repository_env_example_still_loads_without_warnings() -> None:
    s = load_settings(REPO_ROOT / ".env.example")
    assert (s.network, s.marketplace_flavor) == ("local", "native")
    assert s.ignored_reference_settings() == []
