"""Router configuration from the environment and ``.env`` (pydantic-settings).

Every variable is documented in ``.env.example``. A bad value is reported as
one line naming the variable (see ``describe_error``), never a traceback.
"""

from __future__ import annotations

import ipaddress
import json
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from eth_utils import is_address, to_checksum_address
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from proxy_router.keystore import KeystoreError, load_key, read_password
from proxy_router.networks import NETWORKS, Network, NetworkName

Role = Literal["provider", "consumer"]


class ConfigurationError(Exception):
    """Settings that parse but cannot work (missing models file, wrong chain, no key...)."""


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
        None, description="preset chain id, confirmations and polling (chain/networks.py)")
    eth_node_address: str = Field(
        "http://127.0.0.1:8545", description="RPC URL, or several separated by commas")
    eth_node_chain_id: int | None = Field(None, description="expected chain id (checked)")
    eth_node_polling_interval: float = Field(1.0, gt=0, le=60)
    eth_node_confirmations: int = Field(0, ge=0)
    eth_node_start_block: int | None = Field(
        None, ge=0, description="block the market index starts at (the deployment block)")
    eth_node_max_log_range: int = Field(
        5_000, ge=1, description="widest eth_getLogs range asked for (narrowed on refusal)")
    deployment_file: Path | None = Field(
        None, description="JSON written by `proxy-router deploy`: addresses and deploy block")

    # Wallet: a plain key, or an encrypted keystore
    wallet_private_key: SecretStr | None = Field(None, description="0x-hex secp256k1 key")
    keystore_path: Path | None = Field(None, description="Web3 Secret Storage key file")
    keystore_password_file: Path | None = Field(
        None, description="file holding the keystore's password (else asked in a terminal)")

    marketplace_address: str | None = None
    mor_token_address: str | None = None

    # Listeners and storage
    proxy_address: str = "0.0.0.0:3333"
    web_address: str = "127.0.0.1:8082"
    proxy_storage_path: Path = Path("./data")
    models_config_path: Path | None = None

    # Consumer API access
    api_token: SecretStr | None = Field(
        None, description="bearer token the consumer API requires (at least 16 characters)")
    api_basic_auth: SecretStr | None = Field(
        None, description="user:password the consumer API accepts as HTTP basic auth")
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS")

    # Consumer behaviour
    session_duration_s: int = Field(600, ge=300, le=7 * 24 * 3600)
    provider_allowlist: str = Field("", description="comma-separated provider addresses")
    failover_enabled: bool = True
    mor_rpc_connect_timeout_s: float = Field(3.0, gt=0)
    first_token_timeout_s: float = Field(60.0, gt=0)
    session_idle_timeout_s: int = Field(900, ge=0, description="close unused sessions; 0 = never")
    session_sweep_interval_s: float = Field(5.0, gt=0, le=300)

    # Provider behaviour
    backend_timeout_s: float = Field(240.0, gt=0)
    provider_close_grace_s: int = Field(
        60, ge=0, description="wait this long after endsAt for the user's close first")

    # Hostile-network limits (both roles where they apply)
    max_connections_per_ip: int = Field(
        32, ge=1, description="open TCP connections one remote address may hold")
    max_connections: int = Field(1024, ge=1, description="open TCP connections in total")
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="close a connection whose first request headers are late")
    http_keepalive_timeout_s: float = Field(
        30.0, gt=0, description="close an idle (or half-sent) keep-alive connection")
    http_body_timeout_s: float = Field(30.0, gt=0, description="time to receive a request body")
    prompts_per_session: int = Field(
        1, ge=1, description="provider: prompts one session may run at once")
    stream_stall_timeout_s: float = Field(
        30.0, gt=0, description="provider: end a stream whose reader stops for this long")
    approvals_per_user: int = Field(
        3, ge=1, description="provider: unused approvals one requester may hold")
    session_requests_per_ip_s: float = Field(
        20.0, gt=0, description="provider: session.request rate per remote address")
    mor_rpc_replay_window_s: float = Field(
        60.0, ge=5, le=600, description="accept MOR-RPC frames this close to our clock")

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("marketplace_address", "mor_token_address")
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
                     mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """``VAR=`` (as .env.example leaves optional ones) means "not set"."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _apply_network_and_deployment(self) -> Settings:
        """A ``NETWORK`` preset and a deployment file fill what the user did not set."""
        if self.network is not None:
            self._apply_preset(NETWORKS[self.network])
        if self.deployment_file is not None and self.deployment_file.is_file():
            self._apply_deployment(_read_deployment(self.deployment_file))
        if self.wallet_private_key is not None and self.keystore_path is not None:
            raise ValueError("set WALLET_PRIVATE_KEY or KEYSTORE_PATH, not both")
        return self

    def _apply_preset(self, preset: Network) -> None:
        given = self.model_fields_set
        for name, value in (("eth_node_chain_id", preset.chain_id),
                            ("eth_node_confirmations", preset.confirmations),
                            ("eth_node_polling_interval", preset.polling_interval_s),
                            ("eth_node_max_log_range", preset.max_log_range)):
            if name not in given:
                setattr(self, name, value)

    def _apply_deployment(self, dep: dict[str, Any]) -> None:
        self.marketplace_address = self.marketplace_address or _address(
            dep["marketplace_address"])
        self.mor_token_address = self.mor_token_address or _address(dep["mor_token_address"])
        if self.eth_node_start_block is None:
            self.eth_node_start_block = int(dep.get("block_number", 0))
        if self.eth_node_chain_id is None and "chain_id" in dep:
            self.eth_node_chain_id = int(dep["chain_id"])

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
        """(marketplace, MOR token), or a ConfigurationError naming what is missing."""
        if self.marketplace_address is None or self.mor_token_address is None:
            missing = [name for name, value in (("MARKETPLACE_ADDRESS", self.marketplace_address),
                                                ("MOR_TOKEN_ADDRESS", self.mor_token_address))
                       if value is None]
            raise ConfigurationError(f"{' and '.join(missing)} is required (or a "
                                     "DEPLOYMENT_FILE written by `proxy-router deploy`)")
        return self.marketplace_address, self.mor_token_address

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


def _read_deployment(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read deployment file {path}: {exc}") from None
    if not isinstance(data, dict) or not {"marketplace_address",
                                          "mor_token_address"} <= data.keys():
        raise ValueError(f"{path} is not a deployment file (no contract addresses)")
    return data


def describe_error(exc: ValidationError) -> str:
    """One line per bad variable, named as in the environment."""
    lines = []
    for err in exc.errors():
        name = "_".join(str(p) for p in err["loc"]).upper()
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
