"""Encrypting API keys at rest with a Fernet key kept in the data dir, readable by its owner."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from tuneyard.errors import Conflict
from tuneyard.storage import Layout


def _key(key_file: Path) -> bytes:
    """The data dir's key, made on first use."""
    from cryptography.fernet import Fernet

    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: two processes starting at once agree on one key.
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(Fernet.generate_key())
                handle.flush()
                os.fsync(handle.fileno())
    return key_file.read_bytes().strip()


@lru_cache(maxsize=4)
def _fernet(key_file: Path):
    from cryptography.fernet import Fernet

    return Fernet(_key(key_file))


def derived_secret(purpose: str) -> str:
    """A secret for `purpose` (signing cookies, say) that stays the same across restarts and
    never equals the key itself."""
    return hashlib.sha256(purpose.encode() + b":" + _key(Layout().secret_key_file)).hexdigest()


def encrypt_secret(value: str | None) -> str | None:
    if not value:
        return None
    return _fernet(Layout().secret_key_file).encrypt(value.encode()).decode()


def decrypt_secret(token: str | None) -> str | None:
    from cryptography.fernet import InvalidToken

    if not token:
        return None
    key_file = Layout().secret_key_file
    try:
        return _fernet(key_file).decrypt(token.encode()).decode()
    except InvalidToken:
        raise Conflict(
            f"A stored API key cannot be decrypted with {key_file}: the key file was replaced. "
            "Enter the API key again."
        ) from None
