"""Encrypted key files: written 0600 and never overwritten, unlocked only with the right
password, and no error message ever holds the key or the password."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from eth_account import Account

from proxy_router.dev.anvil import dev_address, dev_key
from proxy_router.keystore import (
    KeystoreError,
    keystore_address,
    load_key,
    read_password,
    write_keystore,
)

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "provider.json"
    assert write_keystore(path, dev_key(1), PASSWORD) == dev_address(1)
    return path


def test_a_keystore_is_web3_secret_storage_readable_only_by_its_owner(keystore: Path):
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    data = json.loads(keystore.read_text())
    assert data["version"] == 3 and data["crypto"]["kdf"] == "scrypt"
    assert dev_key(1).removeprefix("0x") not in keystore.read_text()
    assert Account.decrypt(data, PASSWORD).hex() == dev_key(1).removeprefix("0x")
    assert (keystore_address(keystore) or "").lower() == dev_address(1).lower()


def test_the_right_password_unlocks_it_and_a_wrong_one_is_named_as_such(keystore: Path):
    assert load_key(keystore, PASSWORD) == dev_key(1)
    with pytest.raises(KeystoreError, match="wrong password") as info:
        load_key(keystore, "guess")
    assert "guess" not in str(info.value) and dev_key(1)[2:] not in str(info.value)


def test_an_existing_keystore_is_never_overwritten(keystore: Path):
    before = keystore.read_bytes()
    with pytest.raises(KeystoreError, match="already exists"):
        write_keystore(keystore, dev_key(2), PASSWORD)
    assert keystore.read_bytes() == before


@pytest.mark.parametrize(("content", "message"), [
    (b"not json", "not JSON"),
    (b'{"address": "00"}', "not a Web3 Secret Storage keystore"),
    (b"\xff\xfe", "not JSON"),
    (b"{" + b" " * 70_000 + b"}", "too large"),
])
def test_anything_else_is_refused_in_one_line(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "k.json"
    path.write_bytes(content)
    with pytest.raises(KeystoreError, match=message):
        load_key(path, PASSWORD)
    with pytest.raises(KeystoreError, match="cannot read keystore"):
        load_key(tmp_path / "missing.json", PASSWORD)


def test_the_password_comes_from_the_first_line_of_its_file(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "pw").write_text(PASSWORD + "\nignored\n")
    assert read_password(tmp_path / "pw") == PASSWORD
    (tmp_path / "empty").write_text("")
    with pytest.raises(KeystoreError, match="is empty"):
        read_password(tmp_path / "empty")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(KeystoreError, match="KEYSTORE_PASSWORD_FILE"):
        read_password(None)  # no terminal to ask in
