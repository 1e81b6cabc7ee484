"""Router configuration from the environment and ``.env`` (pydantic-settings).

Every variable is documented in ``.env.example``. A bad value is reported as
one line naming the variable (see ``describe_error``), never a traceback.

The reference router's (the Morpheus-Lumerin Go proxy-router's) ``.env`` loads as it
is, so that a provider can move over without rewriting it: its names are ours where
they mean the same (``ETH_NODE_*``, ``WALLET_PRIVATE_KEY``, ``PROXY_ADDRESS``...), or
are mapped onto ours (``DIAMOND_CONTRACT_ADDRESS`` is the morpheus flavour's
marketplace, the cookie credentials are ``API_BASIC_AUTH``, ``LLM_TIMEOUT`` is
``BACKEND_TIMEOUT_S``...), and every duration may be written as a Go duration. The
reference names we have no use for are named once at start-up
(``warn_ignored_reference_settings``), never refused: docs/configuration.md has the
whole table.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import structlog
from eth_utils import is_address, to_checksum_address
from pydantic import (
    AliasChoices,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from proxy_router import bounded_json
from proxy_router.keystore import KeystoreError, load_key, read_password
from proxy_router.networks import (
    NETWORK_ALIASES,
    NETWORKS,
    Flavor,
    Network,
    NetworkName,
    network_of_diamond,
)

Role = Literal["provider", "consumer"]
LogLevel = Literal["debug", "info", "warning", "error"]

# The reference's zap levels (LOG_LEVEL_APP) as ours; "warn" is also accepted in LOG_LEVEL.
_LOG_LEVELS: dict[str, LogLevel] = {
    "debug": "debug", "info": "info", "warn": "warning", "warning": "warning",
    "error": "error", "dpanic": "error", "panic": "error", "fatal": "error"}

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
             "m": 60.0, "h": 3600.0}
_GO_TERM = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_GO_DURATION = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+")
_SECONDS = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")

# Reference names this router has no equivalent for, and why (docs/configuration.md).
REFERENCE_IGNORED: dict[str, str] = {
    "APP_RESET_KEYCHAIN": "no OS keychain: the key is WALLET_PRIVATE_KEY or KEYSTORE_PATH",
    "AUTH_CONFIG_FILE_PATH": "no per-user rpcauth lines or method whitelists: one credential "
                             "(API_TOKEN or API_BASIC_AUTH)",
    "AGENT_CONFIG_PATH": "no MCP agent tools",
    "AGENT_CONFIG_CONTENT": "no MCP agent tools",
    "AGENTS_CONFIG_PATH": "no MCP agent tools (the reference's .env.example spelling)",
    "BLOCKSCOUT_API_URL": "no explorer-backed transaction history",
    "EXPLORER_API_URL": "no explorer-backed transaction history",
    "EXPLORER_RETRY_DELAY": "no explorer-backed transaction history",
    "EXPLORER_MAX_RETRIES": "no explorer-backed transaction history",
    "ENVIRONMENT": "no development/production switch",
    "ETH_NODE_MAX_RECONNECTS": "the RPC is retried, with backoff, for as long as the router runs",
    # Ignored when true; drop them from here once chain/ honours the fields of the same name.
    "ETH_NODE_USE_SUBSCRIPTIONS": "the index always polls eth_getLogs (ETH_NODE_POLLING_INTERVAL)",
    "ETH_NODE_LEGACY_TX": "transactions are always EIP-1559",
    "MULTICALL3_ADDR": "no Multicall3: views are read one by one",
    "LOG_COLOR": "console colours follow the terminal",
    "LOG_FOLDER_PATH": "logs go to stderr only",
    "LOG_IS_PROD": "LOG_FORMAT (or LOG_JSON) chooses the format",
    **{f"LOG_LEVEL_{part}": "one LOG_LEVEL for everything (LOG_LEVEL_APP maps to it)"
       for part in ("TCP", "ETH_RPC", "STORAGE", "CONNECTION", "PROXY", "SCHEDULER",
                    "CONTRACT", "RPC", "BADGER")},
    "PROXY_STORE_CHAT_CONTEXT": "no chat history is kept",
    "PROXY_FORWARD_CHAT_CONTEXT": "no chat history is kept or prepended",
    "PROXY_MAX_CACHED_DESTS": "one WebSocket per provider, no destination cache",
    "MAX_CACHED_DESTS": "one WebSocket per provider, no destination cache",
    "CNODE_PNODE_MAX_RETRIES": "failover tries each rated bid once (FAILOVER_ENABLED)",
    "CNODE_PNODE_AUDIO_MAX_RETRIES": "no audio routes",
    "IPFS_DISABLED": "no IPFS",
    "IPFS_MULTADDR": "no IPFS",
    "DOCKER_HOST": "no Docker model management",
    "DOCKER_API_VERSION": "no Docker model management",
    "DOCKER_CERT_PATH": "no Docker model management",
    "DOCKER_TLS_VERIFY": "no Docker model management",
    **{f"SYS_{part}": "no sysctl or rlimit tuning"
       for part in ("ENABLE", "LOCAL_PORT_RANGE", "NET_DEV_MAX_BACKLOG", "RLIMIT_HARD",
                    "RLIMIT_SOFT", "SOMAXCONN", "TCP_MAX_SYN_BACKLOG")},
    "TEE_PORTAL_URL": "no TEE attestation",
    "TEE_IMAGE_REPO": "no TEE attestation",
    "ARTIFACT_REGISTRY_URL": "no TEE attestation",
    "ARTIFACT_REGISTRY_REFRESH_INTERVAL": "no TEE attestation",
    "WEB_PUBLIC_URL": "no Swagger host or TEE TLS pin (a browser origin goes in CORS_ORIGINS)",
    "CONTRACT_MNEMONIC": "an old reference version's; the key is WALLET_PRIVATE_KEY",
    "PROVIDER_REGISTRY_ADDRESS": "an old reference version's; the diamond holds the registries",
    "MODEL_REGISTRY_ADDRESS": "an old reference version's; the diamond holds the registries",
}
# Values that already are what this router does: not worth a warning.
_FALSE_IS_OURS = frozenset({"ETH_NODE_USE_SUBSCRIPTIONS", "ETH_NODE_LEGACY_TX",
                            "PROXY_STORE_CHAT_CONTEXT", "PROXY_FORWARD_CHAT_CONTEXT",
                            "APP_RESET_KEYCHAIN", "SYS_ENABLE"})
_VALUE_READ = _FALSE_IS_OURS | {"IPFS_DISABLED", "WEB_PUBLIC_URL"}
"""The only reference values kept (none is a secret); of the rest only the name."""
_RATING_MAX_BYTES = 1 << 20
IDLE_TIMEOUT_S = 60
"""A session is paid by the second until it is closed: one question costs its answer's
seconds plus this (a 600 s session was paid in full before). Long enough that a chat
turn or an agent's next step reuses the session (no new stake, gas or hand-shake)."""


class ConfigurationError(Exception):
    """Settings that parse but cannot work (missing models file, wrong chain, no key...)."""


def parse_duration(value: str) -> float:
    """Seconds in ``value``: a Go duration (``10s``, ``1m30s``, ``500ms``, ``1h``), as the
    reference's ``.env`` writes them, or a plain number of seconds, as ours always did."""
    text = value.strip()
    if _SECONDS.fullmatch(text):
        return float(text)
    if not _GO_DURATION.fullmatch(text):
        raise ValueError(f"{value!r} is not a duration: seconds, or a Go duration such as "
                         "10s, 1m30s, 500ms or 1h")
    sign = -1.0 if text.startswith("-") else 1.0
    return sign * sum(float(n) * _GO_UNITS[u] for n, u in _GO_TERM.findall(text))


def _truthy(value: str) -> bool:
    """Go's strconv.ParseBool, loosely: what the reference reads as true."""
    return value.strip().lower() in ("1", "t", "true", "y", "yes", "on")


def _address(value: str) -> str:
    if not is_address(value):
        raise ValueError("must be a 0x-prefixed 20-byte Ethereum address")
    return to_checksum_address(value)


def split_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port (e.g. 127.0.0.1:8082)")
    return host or "0.0.0.0", int(port)


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``::1`` (brackets allowed), nothing else."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or "/" in rest or "*" in rest:
        raise ValueError(f"{value!r} is not an origin like https://app.example.com:8443 "
                         "(scheme://host[:port], no path, no wildcard)")
    return value.lower()


class Settings(BaseSettings):
    """Settings shared by both roles; role-specific ones are ignored by the other."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8",
                                      extra="ignore", case_sensitive=False)

    # Chain
    network: NetworkName | None = Field(
        None, description="preset chain id, confirmations, polling, contracts (networks.py)")
    marketplace_flavor: Flavor = Field(
        "native", description="native: our Marketplace; morpheus: the Morpheus-Lumerin diamond")
    eth_node_address: str = Field(
        "http://127.0.0.1:8545", description="RPC URL, or several separated by commas")
    eth_node_chain_id: int | None = Field(None, description="expected chain id (checked)")
    eth_node_polling_interval: float = Field(1.0, gt=0, le=60)
    eth_node_use_subscriptions: bool = Field(
        False, description="reference name; not honoured: the index polls")
    eth_node_legacy_tx: bool = Field(
        False, description="reference name; not honoured: transactions are EIP-1559")
    eth_node_confirmations: int = Field(0, ge=0)
    eth_node_start_block: int | None = Field(
        None, ge=0, description="block the market index starts at (the deployment block)")
    eth_node_max_log_range: int = Field(
        5_000, ge=1, description="widest eth_getLogs range asked for (narrowed on refusal)")
    eth_node_max_connections: int = Field(
        32, ge=1, description="HTTP connections to the RPC node(s) at once; a request over "
        "it waits, counted in proxy_router_http_pool_waits_total{pool=\"chain\"}")
    deployment_file: Path | None = Field(
        None, description="JSON written by `proxy-router deploy`: addresses and deploy block")

    # Wallet: a plain key, or an encrypted keystore
    wallet_private_key: SecretStr | None = Field(None, description="0x-hex secp256k1 key")
    keystore_path: Path | None = Field(None, description="Web3 Secret Storage key file")
    keystore_password_file: Path | None = Field(
        None, description="file holding the keystore's password (else asked in a terminal)")

    marketplace_address: str | None = None
    diamond_contract_address: str | None = Field(
        None, description="the morpheus flavour's marketplace (the reference's name)")
    mor_token_address: str | None = None

    # Listeners and storage
    proxy_address: str = "0.0.0.0:3333"
    web_address: str = "127.0.0.1:8082"
    proxy_storage_path: Path = Path("./data")
    models_config_path: Path | None = None
    models_config_content: SecretStr | None = Field(
        None, description="models-config JSON inline, read when MODELS_CONFIG_PATH is absent")

    # Consumer API access
    api_token: SecretStr | None = Field(
        None, description="bearer token the consumer API requires (at least 16 characters)")
    api_basic_auth: SecretStr | None = Field(
        None, description="user:password the consumer API accepts as HTTP basic auth")
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS")
    cookie_file_path: Path | None = Field(
        None, description="reference: file whose first line is user:password (API_BASIC_AUTH)")
    cookie_content: SecretStr | None = Field(
        None, description="reference: user:password, used when COOKIE_FILE_PATH is absent")

    # Consumer behaviour
    session_duration_s: int = Field(600, ge=300, le=7 * 24 * 3600)
    provider_allowlist: str = Field(
        "", validation_alias=AliasChoices("provider_allowlist", "provider_allow_list"),
        description="comma-separated provider addresses")
    rating_config_path: Path | None = Field(
        None, description="reference rating-config.json: its providerAllowlist is read")
    failover_enabled: bool = True
    mor_rpc_connect_timeout_s: float = Field(3.0, gt=0)
    first_token_timeout_s: float = Field(
        60.0, gt=0, validation_alias=AliasChoices("first_token_timeout_s", "cnode_pnode_timeout"))
    session_idle_timeout_s: int = Field(
        IDLE_TIMEOUT_S, ge=0, description="close a session opened for chat requests this "
        "long after its last answer (0 = at its end); default 60, Morpheus stake mode 0")
    session_sweep_interval_s: float = Field(5.0, gt=0, le=300)
    session_payment: Literal["direct", "stake"] = Field(
        "direct", description="Morpheus flavour: the user pays the provider (direct) or "
        "only stakes MOR and the emission pays (stake)")
    provider_wire: Literal["auto", "mor-rpc", "reference"] = Field(
        "auto", description="how providers are spoken to: auto tries our mor-rpc/1 "
        "WebSocket first and falls back to the reference's raw-TCP MOR-RPC")

    # Provider behaviour
    backend_timeout_s: float = Field(
        240.0, gt=0, validation_alias=AliasChoices("backend_timeout_s", "llm_timeout"))
    provider_close_grace_s: int = Field(
        60, ge=0, description="wait this long after endsAt for the user's close first")

    # Hostile-network limits (both roles where they apply)
    max_connections_per_ip: int = Field(
        32, ge=1, description="open TCP connections one remote address may hold "
        "(loopback peers are exempt)")
    max_connections: int = Field(1024, ge=1, description="open TCP connections in total")
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="close a connection whose first request headers are late")
    http_keepalive_timeout_s: float = Field(
        30.0, gt=0, description="close an idle (or half-sent) keep-alive connection")
    http_body_timeout_s: float = Field(30.0, gt=0, description="time to receive a request body")
    prompts_per_session: int = Field(
        1, ge=1, description="provider: prompts one session may run at once")
    prompt_queue_depth: int = Field(
        32, ge=0, le=10_000, description="both roles: prompts that may wait for a busy slot "
        "(provider: per model; consumer: per session), first come first served; beyond "
        "that a 429 with Retry-After (0 = refuse at once)")
    prompt_queue_wait_s: float = Field(
        30.0, ge=0, le=3600, description="both roles: longest wait in that queue, then a "
        "429 with Retry-After; a provider's must stay below its consumers' "
        "FIRST_TOKEN_TIMEOUT_S (default 60), which counts its wait")
    stream_stall_timeout_s: float = Field(
        30.0, gt=0, description="provider: end a stream whose reader stops for this long")
    approvals_per_user: int = Field(
        3, ge=1, description="provider: unused approvals one requester may hold")
    session_requests_per_ip_s: float = Field(
        20.0, gt=0, description="provider: session.request rate per remote address")
    mor_rpc_replay_window_s: float = Field(
        60.0, ge=5, le=600, description="accept MOR-RPC frames this close to our clock")

    log_level: LogLevel = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level_app: str | None = Field(None, description="reference: LOG_LEVEL when that is unset")
    log_json: bool | None = Field(None, description="reference: LOG_FORMAT when that is unset")

    _reference_seen: dict[str, str] = PrivateAttr(default_factory=dict)
    _rating_params_ignored: bool = PrivateAttr(default=False)

    @model_validator(mode="wrap")
    @classmethod
    def _blank_and_reference_names(cls, data: Any,
                                   handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        """``VAR=`` means "not set" for every variable (the reference's .env leaves many
        blank), and the reference names set here are noted for the start-up warning."""
        seen: dict[str, str] = {}
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
            seen = _reference_names(data)
        settings = handler(data)
        settings._reference_seen = seen
        return settings

    @field_validator("network", mode="before")
    @classmethod
    def _network_alias(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower()
            return NETWORK_ALIASES.get(value, value)
        return value

    @field_validator("eth_node_polling_interval", "session_duration_s",
                     "mor_rpc_connect_timeout_s", "first_token_timeout_s",
                     "session_idle_timeout_s", "session_sweep_interval_s", "backend_timeout_s",
                     "provider_close_grace_s", "http_header_timeout_s",
                     "http_keepalive_timeout_s", "http_body_timeout_s",
                     "stream_stall_timeout_s", "mor_rpc_replay_window_s",
                     "prompt_queue_wait_s", mode="before")
    @classmethod
    def _go_duration(cls, value: object) -> object:
        """``10s``, ``1m30s``, ``500ms`` or plain seconds; whole seconds where an int is due."""
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _warn_is_warning(cls, value: object) -> object:
        return _LOG_LEVELS.get(value.strip().lower(), value) if isinstance(value, str) else value

    @field_validator("log_level_app")
    @classmethod
    def _check_zap_level(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() not in _LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
        return None if value is None else value.strip().lower()

    @field_validator("marketplace_address", "mor_token_address", "diamond_contract_address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        return None if value is None else _address(value)

    @field_validator("wallet_private_key")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value().removeprefix("0x")
        if len(raw) != 64 or any(c not in "0123456789abcdefABCDEF" for c in raw):
            raise ValueError("must be a 32-byte hex private key")
        return value

    @field_validator("wallet_private_key", "keystore_path", "keystore_password_file",
                     "marketplace_address", "mor_token_address", "deployment_file",
                     "eth_node_start_block", "network", "api_token", "api_basic_auth",
                     "diamond_contract_address", "models_config_content", "cookie_file_path",
                     "cookie_content", "rating_config_path", "models_config_path",
                     mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """``VAR=`` (as .env.example leaves optional ones) means "not set"."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _apply_network_and_deployment(self) -> Settings:
        """Fill what the user did not set: from a deployment file, then a ``NETWORK``
        preset; the reference's names where ours are unset (cookie, logging, rating)."""
        given = set(self.model_fields_set)  # a copy: assigning below adds to the live set
        dep = (_read_deployment(self.deployment_file)
               if self.deployment_file is not None and self.deployment_file.is_file() else None)
        self._choose_flavor(given, dep)
        morpheus = self.marketplace_flavor == "morpheus"
        if morpheus:
            self._one_marketplace()
            if self.network is None:
                self._infer_network()
        preset = NETWORKS[self.network] if self.network is not None else None
        if preset is not None:
            self._apply_preset(preset, given)
        if dep is not None:
            self._apply_deployment(dep)
        if morpheus and preset is not None and preset.flavor == "morpheus":
            self._apply_contracts(preset)
        if morpheus:
            self.diamond_contract_address = self.marketplace_address
        self._apply_cookie()
        self._apply_reference_logging(given)
        self._apply_rating_config(given)
        if self.wallet_private_key is not None and self.keystore_path is not None:
            raise ValueError("set WALLET_PRIVATE_KEY or KEYSTORE_PATH, not both")
        return self

    def _choose_flavor(self, given: set[str], dep: dict[str, Any] | None) -> None:
        """``MARKETPLACE_FLAVOR``, else what the addresses say, else the preset's.

        A diamond address (or a deployment of the reference's contracts) means morpheus;
        our own Marketplace's address or deployment file means native, so a config that
        ran against our contracts on BASE before the presets knew the diamond still does.
        """
        if "marketplace_flavor" not in given:
            if self.diamond_contract_address is not None:
                self.marketplace_flavor = "morpheus"
            elif dep is not None:
                self.marketplace_flavor = dep["flavor"]
            elif self.marketplace_address is not None or self.deployment_file is not None:
                self.marketplace_flavor = "native"
            elif self.network is not None:
                self.marketplace_flavor = NETWORKS[self.network].flavor
        if self.marketplace_flavor == "native" and self.diamond_contract_address is not None:
            raise ValueError("DIAMOND_CONTRACT_ADDRESS is the morpheus flavour's marketplace: "
                             "set MARKETPLACE_FLAVOR=morpheus, or MARKETPLACE_ADDRESS for ours")
        if dep is not None and dep["flavor"] != self.marketplace_flavor:
            raise ValueError(f"DEPLOYMENT_FILE {self.deployment_file} describes a "
                             f"{dep['flavor']} deployment but MARKETPLACE_FLAVOR is "
                             f"{self.marketplace_flavor}")

    def _one_marketplace(self) -> None:
        """In the morpheus flavour MARKETPLACE_ADDRESS, if given, is the diamond too."""
        diamond, market = self.diamond_contract_address, self.marketplace_address
        if diamond is not None and market is not None and diamond != market:
            raise ValueError("DIAMOND_CONTRACT_ADDRESS and MARKETPLACE_ADDRESS differ: the "
                             "morpheus flavour's marketplace is the diamond, set one of them")
        self.marketplace_address = diamond or market
        if self.network is not None and self.marketplace_address is not None:
            owner = network_of_diamond(self.marketplace_address)
            here = NETWORKS[self.network]
            if owner is not None and here.public and owner.name != here.name:
                raise ValueError(f"DIAMOND_CONTRACT_ADDRESS is the {owner.name} diamond, but "
                                 f"NETWORK is {here.name}")

    def _infer_network(self) -> None:
        """A known diamond names its network (the reference's .env has no NETWORK)."""
        if self.marketplace_address is None:
            return
        owner = network_of_diamond(self.marketplace_address)
        if owner is not None and self.eth_node_chain_id in (None, owner.chain_id):
            self.network = owner.name

    def _apply_preset(self, preset: Network, given: set[str]) -> None:
        for name, value in (("eth_node_chain_id", preset.chain_id),
                            ("eth_node_confirmations", preset.confirmations),
                            ("eth_node_polling_interval", preset.polling_interval_s),
                            ("eth_node_max_log_range", preset.max_log_range)):
            if name not in given:
                setattr(self, name, value)

    def _apply_contracts(self, preset: Network) -> None:
        """The preset's diamond, MOR and start block; the start only with its own diamond."""
        assert preset.diamond_address is not None and preset.mor_token_address is not None
        diamond = _address(preset.diamond_address)
        self.marketplace_address = self.marketplace_address or diamond
        self.mor_token_address = self.mor_token_address or _address(preset.mor_token_address)
        if self.eth_node_start_block is None and self.marketplace_address == diamond:
            self.eth_node_start_block = preset.start_block

    def _apply_deployment(self, dep: dict[str, Any]) -> None:
        self.marketplace_address = self.marketplace_address or _address(
            dep["marketplace_address"])
        self.mor_token_address = self.mor_token_address or _address(dep["mor_token_address"])
        if self.eth_node_start_block is None:
            self.eth_node_start_block = int(dep.get("block_number") or 0)
        if self.eth_node_chain_id is None and dep.get("chain_id") is not None:
            self.eth_node_chain_id = int(dep["chain_id"])

    def _apply_cookie(self) -> None:
        """The reference's API credential: COOKIE_FILE_PATH's first line if the file
        exists, else COOKIE_CONTENT (as there, the file wins); API_BASIC_AUTH wins both."""
        if self.api_basic_auth is not None:
            return
        if self.cookie_file_path is not None and self.cookie_file_path.is_file():
            try:
                text = self.cookie_file_path.read_text(encoding="utf-8")
            except (OSError, UnicodeError) as exc:
                raise ValueError(f"cannot read COOKIE_FILE_PATH {self.cookie_file_path}: "
                                 f"{type(exc).__name__}") from None
            line, source = (text.splitlines() or [""])[0].strip(), "COOKIE_FILE_PATH"
        elif self.cookie_content is not None:
            line, source = self.cookie_content.get_secret_value().strip(), "COOKIE_CONTENT"
        else:
            return
        user, sep, password = line.partition(":")
        if not user or not sep or not password:
            raise ValueError(f"{source} must hold user:password (the reference's cookie)")
        self.api_basic_auth = SecretStr(line)

    def _apply_reference_logging(self, given: set[str]) -> None:
        if "log_level" not in given and self.log_level_app is not None:
            self.log_level = _LOG_LEVELS[self.log_level_app]
        if "log_format" not in given and self.log_json is not None:
            self.log_format = "json" if self.log_json else "console"

    def _apply_rating_config(self, given: set[str]) -> None:
        """The reference's rating-config.json: its providerAllowlist is ours when
        PROVIDER_ALLOWLIST is unset; its weights are not (our rating is fixed)."""
        path = self.rating_config_path
        if path is None or not path.is_file():
            return
        try:
            data = bounded_json.loads(path.read_bytes(), max_bytes=_RATING_MAX_BYTES)
        except (OSError, ValueError) as exc:
            raise ValueError(f"RATING_CONFIG_PATH {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"RATING_CONFIG_PATH {path}: expected a JSON object")
        allow = data.get("providerAllowlist") or []
        if not isinstance(allow, list) or not all(isinstance(a, str) and is_address(a)
                                                  for a in allow):
            raise ValueError(f"RATING_CONFIG_PATH {path}: providerAllowlist must be a list of "
                             "0x addresses")
        if allow and "provider_allowlist" not in given:
            self.provider_allowlist = ",".join(_address(a) for a in allow)
        self._rating_params_ignored = "params" in data

    @model_validator(mode="after")
    def _idle_default_for_stake_mode(self) -> Settings:
        """In Morpheus stake mode the emission pays the provider, so an early close saves
        the wallet nothing and holds its stake until the next UTC midnight: by default a
        session there runs to its end (then the whole stake comes back at once)."""
        if "session_idle_timeout_s" not in self.model_fields_set and \
                self.marketplace_flavor == "morpheus" and self.session_payment == "stake":
            self.session_idle_timeout_s = 0
        return self

    @field_validator("api_token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("api_basic_auth")
    @classmethod
    def _check_basic(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            user, sep, password = value.get_secret_value().partition(":")
            if not user or not sep or not password:
                raise ValueError("must be user:password")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: str) -> str:
        for item in (v.strip() for v in value.split(",")):
            if item:
                _origin(item)
        return value

    @field_validator("proxy_address", "web_address")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("eth_node_address")
    @classmethod
    def _check_urls(cls, value: str) -> str:
        urls = [u.strip() for u in value.split(",") if u.strip()]
        if not urls or any(not u.startswith(("http://", "https://", "ws://", "wss://"))
                           for u in urls):
            raise ValueError("must be one or more http(s):// or ws(s):// URLs, comma-separated")
        return value

    @field_validator("provider_allowlist")
    @classmethod
    def _check_allowlist(cls, value: str) -> str:
        for item in (v.strip() for v in value.split(",")):
            if item:
                _address(item)
        return value

    @property
    def eth_rpc_urls(self) -> list[str]:
        return [u.strip() for u in self.eth_node_address.split(",") if u.strip()]

    @property
    def allowlist(self) -> set[str]:
        return {_address(v.strip()) for v in self.provider_allowlist.split(",") if v.strip()}

    @property
    def has_key(self) -> bool:
        return self.wallet_private_key is not None or self.keystore_path is not None

    @cached_property
    def private_key(self) -> str:
        """The wallet's key: ``WALLET_PRIVATE_KEY``, or ``KEYSTORE_PATH`` unlocked (once)."""
        if self.wallet_private_key is not None:
            return self.wallet_private_key.get_secret_value()
        if self.keystore_path is None:
            raise ConfigurationError("a wallet is required: set KEYSTORE_PATH (with "
                                     "KEYSTORE_PASSWORD_FILE) or WALLET_PRIVATE_KEY")
        try:
            password = read_password(self.keystore_password_file,
                                     prompt=f"password for {self.keystore_path}: ")
            return load_key(self.keystore_path, password)
        except KeystoreError as exc:
            raise ConfigurationError(f"KEYSTORE_PATH: {exc}") from None

    def market_addresses(self) -> tuple[str, str]:
        """(marketplace, MOR token), or a ConfigurationError naming what is missing.

        In the morpheus flavour the marketplace is the diamond."""
        if self.marketplace_address is None or self.mor_token_address is None:
            morpheus = self.marketplace_flavor == "morpheus"
            market = "DIAMOND_CONTRACT_ADDRESS" if morpheus else "MARKETPLACE_ADDRESS"
            missing = [name for name, value in ((market, self.marketplace_address),
                                                ("MOR_TOKEN_ADDRESS", self.mor_token_address))
                       if value is None]
            hint = ("a NETWORK preset: base, base-sepolia, arbitrum, arbitrum-sepolia"
                    if morpheus else "a DEPLOYMENT_FILE written by `proxy-router deploy`")
            raise ConfigurationError(f"{' and '.join(missing)} is required (or {hint})")
        return self.marketplace_address, self.mor_token_address

    def ignored_reference_settings(self) -> list[str]:
        """The reference's names set here that this router has no use for, sorted.

        Only names, never values; a value that already is what we do (for example
        ``ETH_NODE_USE_SUBSCRIPTIONS=false``) is not counted."""
        seen = self._reference_seen
        sys_enabled = _truthy(seen.get("SYS_ENABLE", ""))
        _, web_port = split_host_port(self.web_address)
        names = set()
        for name, value in seen.items():
            if name in _FALSE_IS_OURS and not _truthy(value):
                continue
            if name == "IPFS_DISABLED" and _truthy(value):
                continue
            if name.startswith("SYS_") and name != "SYS_ENABLE" and not sys_enabled:
                continue  # the reference applies SYS_* only with SYS_ENABLE=true
            if name == "WEB_PUBLIC_URL" and value.rstrip("/") in (
                    f"http://localhost:{web_port}", f"http://127.0.0.1:{web_port}"):
                continue  # the reference's own fallback: nothing public to lose
            names.add(name)
        for name, on in (("ETH_NODE_USE_SUBSCRIPTIONS", self.eth_node_use_subscriptions),
                         ("ETH_NODE_LEGACY_TX", self.eth_node_legacy_tx),
                         ("RATING_CONFIG_PATH", self._rating_params_ignored)):
            if on:
                names.add(name)
        return sorted(names)

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(_origin(v.strip()) for v in self.cors_origins.split(",") if v.strip())

    def consumer_problem(self) -> str | None:
        """Why the consumer must not start with these settings, naming the variable."""
        host, _ = split_host_port(self.web_address)
        if not is_loopback(host) and self.api_token is None and self.api_basic_auth is None:
            return (f"API_TOKEN (or API_BASIC_AUTH) is required when WEB_ADDRESS "
                    f"({self.web_address}) is not a loopback address")
        return None


def _reference_names(data: dict[str, Any]) -> dict[str, str]:
    """Which REFERENCE_IGNORED names are set, in the environment or the .env file (whose
    unknown names pydantic-settings passes on as extras): name -> value, or "" where the
    value is not needed (it may be a secret, e.g. CONTRACT_MNEMONIC)."""
    environ = {k.upper(): v for k, v in os.environ.items()}
    found: dict[str, str] = {}
    for name in REFERENCE_IGNORED:
        value = environ.get(name)
        if value is None or not value.strip():
            raw = data.get(name.lower(), data.get(name))
            value = None if raw is None else str(raw)
        if value is not None and value.strip():
            found[name] = value.strip() if name in _VALUE_READ else ""
    return found


def warn_ignored_reference_settings(settings: Settings) -> list[str]:
    """Name, in one warning, the reference settings this router ignores; the names.

    Called once at start-up, after logging is configured. Never an error: a reference
    ``.env`` must start a router, and the names are enough to act on (no values)."""
    names = settings.ignored_reference_settings()
    if names:
        structlog.get_logger(__name__).warning(
            "reference_settings_ignored", names=names, see="docs/configuration.md")
    return names


def _read_deployment(path: Path) -> dict[str, Any]:
    """Ours (``proxy-router deploy``) or the reference's contracts deployed by
    ``shared/morpheus-ref/deploy.py``; the same keys either way, with the flavour."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read deployment file {path}: {exc}") from None
    if isinstance(data, dict) and {"marketplace_address", "mor_token_address"} <= data.keys():
        return {"flavor": "native", "marketplace_address": data["marketplace_address"],
                "mor_token_address": data["mor_token_address"],
                "block_number": data.get("block_number"), "chain_id": data.get("chain_id")}
    if isinstance(data, dict) and {"diamond", "mor"} <= data.keys():
        return {"flavor": "morpheus", "marketplace_address": data["diamond"],
                "mor_token_address": data["mor"],
                "block_number": data.get("deploy_block", data.get("diamond_block")),
                "chain_id": data.get("chain_id")}
    raise ValueError(f"{path} is not a deployment file (no contract addresses)")


_ALSO_NAMED = {"BACKEND_TIMEOUT_S": "LLM_TIMEOUT", "FIRST_TOKEN_TIMEOUT_S": "CNODE_PNODE_TIMEOUT",
               "PROVIDER_ALLOWLIST": "PROVIDER_ALLOW_LIST"}
"""Our variables the reference names otherwise (their validation_alias)."""


def describe_error(exc: ValidationError) -> str:
    """One line per bad variable, named as in the environment."""
    lines = []
    for err in exc.errors():
        name = "_".join(str(p) for p in err["loc"]).upper()
        also = _ALSO_NAMED.get(name)
        if also:  # read under either name; say both, the user wrote one of them
            name = f"{name} ({also})"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required but not set"
        lines.append(f"invalid configuration: {name} {msg}" if name
                     else f"invalid configuration: {msg}")
    return "\n".join(lines)


def load_settings(env_file: Path | None = None) -> Settings:
    if env_file is not None:
        return Settings(_env_file=env_file)  # type: ignore[call-arg]
    return Settings()  # type: ignore[call-arg]
