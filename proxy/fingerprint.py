"""Credential fingerprints: what the ledger and the exports know of a provider key.

`KeyFingerprinter` is an HMAC of the credential keyed with the per-install secret, so a key
is recognisable across calls and never recoverable. `secret_beside` is that secret for a
SQLite ledger: a file beside it (0600), made on first use; it also keys consumer keys'
stored hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

__all__ = ["KeyFingerprinter", "secret_beside"]


def secret_beside(db_path: str) -> bytes:
    """The per-install secret of a SQLite ledger: `<ledger>.secret` beside it (0600),
    made on first use. It keys credential fingerprints and consumer keys' stored hashes."""
    path = Path(f"{db_path}.secret")
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(32).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: theirs
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    return secret


class KeyFingerprinter:
    """HMAC of a credential with a per-install secret kept beside the database (0600)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._cache: dict[str, str] = {}

    def __call__(self, credential: str | None) -> str | None:
        if not credential:
            return None
        fp = self._cache.get(credential)
        if fp is None:
            fp = "k_" + hmac.new(self._secret, credential.encode(), hashlib.sha256).hexdigest()[:16]
            if len(self._cache) < 10_000:
                self._cache[credential] = fp
        return fp
