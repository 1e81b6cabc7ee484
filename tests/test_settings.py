"""Settings a router and the CLI share: network presets, the deployment file, and where
the wallet's key comes from (a keystore, or the plain variable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_utils import to_checksum_address
from pydantic import SecretStr, ValidationError

from proxy_router.config import ConfigurationError, Settings
from proxy_router.dev.anvil import dev_key
from proxy_router.keystore import write_keystore

MARKET, TOKEN = "0x" + "11" * 20, "0x" + "22" * 20


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize(("network", "chain_id", "confirmations"), [
    ("local", 31337, 0), ("arbitrum-sepolia", 421614, 20), ("arbitrum-one", 42161, 20),
    ("base-sepolia", 84532, 5), ("base", 8453, 5)])
def test_a_network_preset_sets_chain_id_confirmations_and_polling(
        network: str, chain_id: int, confirmations: int):
    s = settings(network=network)
    assert (s.eth_node_chain_id, s.eth_node_confirmations) == (chain_id, confirmations)
    assert s.eth_node_polling_interval > 0 and s.eth_node_max_log_range >= 1


def test_what_the_user_sets_wins_over_the_preset():
    s = settings(network="base", eth_node_confirmations=12, eth_node_polling_interval=0.5)
    assert (s.eth_node_chain_id, s.eth_node_confirmations, s.eth_node_polling_interval) == (
        8453, 12, 0.5)
    with pytest.raises(ValidationError):
        settings(network="ethereum-classic")


def test_a_deployment_file_fills_the_addresses_chain_and_start_block(tmp_path: Path):
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps({"chain_id": 31337, "marketplace_address": MARKET,
                                "mor_token_address": TOKEN, "block_number": 7}))
    s = settings(deployment_file=path)
    assert s.market_addresses() == (to_checksum_address(MARKET), to_checksum_address(TOKEN))
    assert (s.eth_node_start_block, s.eth_node_chain_id) == (7, 31337)
    explicit = settings(deployment_file=path, eth_node_start_block=3)
    assert explicit.eth_node_start_block == 3
    path.write_text("{}")
    with pytest.raises(ValidationError, match="not a deployment file"):
        settings(deployment_file=path)


def test_missing_market_addresses_are_named():
    with pytest.raises(ConfigurationError, match="MARKETPLACE_ADDRESS and MOR_TOKEN_ADDRESS"):
        settings().market_addresses()


def test_the_key_comes_from_a_keystore_unlocked_with_its_password_file(tmp_path: Path):
    keystore = tmp_path / "wallet.json"
    write_keystore(keystore, dev_key(3), "pw-123")
    (tmp_path / "pw").write_text("pw-123\n")
    s = settings(keystore_path=keystore, keystore_password_file=tmp_path / "pw")
    assert s.has_key and s.private_key == dev_key(3)
    assert dev_key(3) not in repr(s) and dev_key(3)[2:] not in str(s.model_dump())

    (tmp_path / "wrong").write_text("nope\n")
    bad = settings(keystore_path=keystore, keystore_password_file=tmp_path / "wrong")
    with pytest.raises(ConfigurationError, match="KEYSTORE_PATH: wrong password") as info:
        bad.private_key  # noqa: B018
    assert "nope" not in str(info.value)


def test_a_plain_key_still_works_but_not_together_with_a_keystore(tmp_path: Path):
    assert settings(wallet_private_key=SecretStr(dev_key(2))).private_key == dev_key(2)
    with pytest.raises(ValidationError, match="not both"):
        settings(wallet_private_key=SecretStr(dev_key(2)), keystore_path=tmp_path / "k")
    with pytest.raises(ConfigurationError, match="a wallet is required"):
        settings().private_key  # noqa: B018
