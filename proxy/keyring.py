"""The consumer keys a process knows, and how keys are issued, changed, revoked, rotated.

`KeyRegistry`: every stored key by the HMAC of its secret (keyed with the install's
secret), so a presented credential is one HMAC and one dict lookup, never a database trip.
Loaded at start; reloaded at once after a change made through this process (the API), and
when the keys' version in the ledger moves: polled every second (the CLI writes a SQLite
ledger from another process; on PostgreSQL the poll is the fallback), and on PostgreSQL also
on the NOTIFY every change sends, so a revoke reaches every replica within a second. On
SQLite the version is read only when the file changed since the last reading (its stat:
an idle proxy makes no database trip), and at least every `RECHECK_SECONDS`.

`KeyAdmin`: create, change, revoke, rotate, for the API and the CLI alike, on any backend.
The secret exists only in what `create` and `rotate` return."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from proxy.backends import LedgerBackend
from proxy.fingerprint import secret_beside
from proxy.keys import (
    ConsumerKey,
    KeyLimits,
    KeySpecError,
    StoredKey,
    from_row,
    hash_secret,
    iso,
    new_id,
    new_secret,
    to_row,
)
from proxy.tasks import spawn

__all__ = ["KeyAdmin", "KeyRegistry", "install_secret"]

log = logging.getLogger("tokenbooth.keys")
POLL_SECONDS = 1.0
RECHECK_SECONDS = 60.0  # the version read even when the file's stat did not move


async def install_secret(backend: LedgerBackend) -> bytes:
    """The per-install secret: the fleet's (in its ledger, the same on every replica), or
    the file beside a SQLite ledger."""
    if backend.fleet is not None:
        return await backend.fleet.secret()
    assert backend.path is not None
    return await asyncio.to_thread(secret_beside, backend.path)


class KeyRegistry:
    """Every stored key (revoked and expired ones too: they are refused by name), by hash."""

    def __init__(self, backend: LedgerBackend, secret: bytes,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self._backend = backend
        self._secret = secret
        self._poll = poll_seconds
        self.by_hash: dict[str, StoredKey] = {}
        self.by_id: dict[str, StoredKey] = {}
        self.version = -1
        self._signature: object | None = None  # the backend's, when the version was read
        self._task: asyncio.Task[None] | None = None
        self._reload_wanted = asyncio.Event()
        self._healthy = True

    def lookup(self, credential: str) -> StoredKey | None:
        """The stored key this credential is the secret of (None: not a consumer key)."""
        return self.by_hash.get(hash_secret(self._secret, credential))

    async def open(self) -> None:
        """Load every key and, on a shared ledger, listen for changes (before serving)."""
        await self.load()
        fleet = self._backend.fleet
        if fleet is not None:
            await fleet.watch_keys(self.changed)

    async def load(self) -> None:
        """Read every key from the ledger (a snapshot, with its version; a snapshot older
        than the one held, read by a load that overlapped a newer one, is dropped)."""
        version, rows = await self._backend.keys()
        if version < self.version:
            return
        keys = [from_row(r) for r in rows]
        self.by_hash = {k.hash: k for k in keys}
        self.by_id = {k.key.id: k for k in keys}
        self.version = version

    def changed(self) -> None:
        """A key changed somewhere (NOTIFY): reload now, not at the next poll."""
        self._reload_wanted.set()

    def start(self) -> None:
        self._task = spawn(self._run(), name="tokenbooth-keys")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        checked_at = loop.time()
        while True:
            try:
                await asyncio.wait_for(self._reload_wanted.wait(), self._poll)
            except TimeoutError:
                pass
            wanted = self._reload_wanted.is_set()
            self._reload_wanted.clear()
            try:
                fleet = self._backend.fleet
                if fleet is not None and not fleet.watching_keys():
                    await fleet.watch_keys(self.changed)
                    wanted = True  # changes while nobody listened
                signature = self._backend.keys_signature()
                if signature is None or signature != self._signature or wanted or \
                        loop.time() - checked_at >= RECHECK_SECONDS:
                    # taken before the reading: a change after it moves it again
                    if wanted or await self._backend.keys_version() != self.version:
                        await self.load()
                    self._signature, checked_at = signature, loop.time()
                if not self._healthy:
                    log.info("keys: the ledger answers again")
                self._healthy = True
            except Exception as exc:  # never ends while the process lives: last keys stay
                if self._healthy:
                    log.warning("keys: cannot reload from the ledger (%s: %s); the keys "
                                "loaded last stay in force", type(exc).__name__, exc)
                self._healthy = False

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


class KeyAdmin:
    """Issue and manage keys in a ledger (the API's and the CLI's)."""

    def __init__(self, backend: LedgerBackend, secret: bytes) -> None:
        self._backend = backend
        self._secret = secret

    def _new_secret(self) -> tuple[str, str]:
        secret = new_secret()
        return secret, hash_secret(self._secret, secret)

    async def all(self) -> list[StoredKey]:
        _version, rows = await self._backend.keys()
        return [from_row(r) for r in rows]

    async def get(self, key_id: str) -> StoredKey | None:
        return next((k for k in await self.all() if k.key.id == key_id), None)

    async def create(self, spec: Mapping[str, Any]) -> tuple[StoredKey, str]:
        """A new key from a checked spec (`keys.parse_spec`): it and its secret."""
        secret, digest = self._new_secret()
        key = ConsumerKey(new_id(), spec["name"], dict(spec.get("tags", {})),
                          tuple(spec.get("upstreams", ())), tuple(spec.get("models", ())),
                          spec.get("expires_at"), spec.get("limits", KeyLimits()))
        stored = StoredKey(key, digest, secret[-4:], iso(datetime.now(UTC)))
        await self._backend.add_key(to_row(stored))
        return from_row(to_row(stored)), secret

    async def change(self, key_id: str, spec: Mapping[str, Any]) -> StoredKey | None:
        """Change what a spec names (a revoked key stays revoked); None: no such key."""
        current = await self.get(key_id)
        if current is None:
            return None
        key = replace(current.key, **spec)
        row = to_row(replace(current, key=key))
        if spec:
            await self._backend.change_key(key_id, {k: row[k] for k in row
                                                    if k not in ("id", "hash", "last4",
                                                                 "created_at", "revoked_at")})
        return await self.get(key_id)

    async def revoke(self, key_id: str) -> StoredKey | None:
        """Revoke (at once, for good; the key and its calls stay on record)."""
        current = await self.get(key_id)
        if current is None:
            return None
        if current.revoked_at is None:
            await self._backend.change_key(key_id, {"revoked_at": iso(datetime.now(UTC))})
        return await self.get(key_id)

    async def rotate(self, key_id: str) -> tuple[StoredKey, str] | None:
        """A new secret for the key (same id, name, settings); the old one stops working."""
        current = await self.get(key_id)
        if current is None:
            return None
        if current.revoked_at is not None:
            raise KeySpecError("id", f"key {key_id} is revoked: create a new key instead")
        secret, digest = self._new_secret()
        await self._backend.change_key(key_id, {"hash": digest, "last4": secret[-4:]})
        stored = await self.get(key_id)
        assert stored is not None
        return stored, secret
