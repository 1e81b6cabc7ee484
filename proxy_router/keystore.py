"""Encrypted key files (Web3 Secret Storage, as eth-account writes them).

A router or the CLI reads its key from ``KEYSTORE_PATH``, unlocked with the
password in ``KEYSTORE_PASSWORD_FILE`` (or typed at a prompt in a terminal), so
no plain-text key has to lie in ``.env``. Files are written 0600 and never
overwritten; errors name the file, never the key or the password.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from eth_account import Account

MAX_KEYSTORE_BYTES = 64 * 1024  # a keystore is ~500 bytes; anything larger is not one


class KeystoreError(Exception):
    """A keystore or its password could not be used (the message names which file)."""


def read_password(password_file: Path | None, *, prompt: str = "keystore password: ",
                  confirm: bool = False) -> str:
    """The password from ``password_file`` (first line), or typed in a terminal."""
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise KeystoreError(f"cannot read password file {password_file}: "
                                f"{exc.strerror}") from None
        password = text.splitlines()[0] if text else ""
        if not password:
            raise KeystoreError(f"password file {password_file} is empty")
        return password
    if not sys.stdin.isatty():
        raise KeystoreError("no password: set KEYSTORE_PASSWORD_FILE (or --password-file), "
                            "or run in a terminal to be asked")
    password = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != password:
        raise KeystoreError("the two passwords differ")
    if not password:
        raise KeystoreError("an empty password is not accepted")
    return password


def load_key(path: Path, password: str) -> str:
    """The 0x-hex private key in the keystore at ``path``."""
    try:
        if path.stat().st_size > MAX_KEYSTORE_BYTES:
            raise KeystoreError(f"{path} is not a keystore (too large)")
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeystoreError(f"cannot read keystore {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise KeystoreError(f"{path} is not a keystore (not JSON)") from None
    if not isinstance(data, dict) or ("crypto" not in data and "Crypto" not in data):
        raise KeystoreError(f"{path} is not a Web3 Secret Storage keystore")
    try:
        key = Account.decrypt(data, password)
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise KeystoreError(f"wrong password for keystore {path}") from None
        raise KeystoreError(f"keystore {path} cannot be decrypted: unsupported format") from None
    except (KeyError, TypeError):
        raise KeystoreError(f"keystore {path} is malformed") from None
    return "0x" + bytes(key).hex()


def keystore_address(path: Path) -> str | None:
    """The address a keystore declares (readable without the password), if any."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    address = data.get("address") if isinstance(data, dict) else None
    return f"0x{address.removeprefix('0x')}" if isinstance(address, str) else None


def write_keystore(path: Path, private_key: str, password: str) -> str:
    """Encrypt ``private_key`` into a new file at ``path`` (mode 0600); returns the address.

    Refuses to overwrite: a lost keystore is lost MOR.
    """
    account = Account.from_key(private_key)
    data = Account.encrypt(account.key, password, kdf="scrypt")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeystoreError(f"{path} already exists; not overwriting a keystore") from None
    except OSError as exc:
        raise KeystoreError(f"cannot write keystore {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out)
        out.write("\n")
    os.chmod(path, 0o600)  # O_CREAT's mode is masked by the umask; the file must be 0600
    return str(account.address)
