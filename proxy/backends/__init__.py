"""Ledger backends behind one interface (`LedgerBackend`, in `base`): SQLite (the default,
one process) and PostgreSQL (a ledger shared by a fleet of proxies, also a
`FleetBackend`). `open_backend(target)` picks one from `ledger.url` or `--db` through the
registry (`sqlite:///path`, a bare path, or `postgresql://...`); the SQL both run is
`query` and `schema` (a fleet's own, PostgreSQL only, is `fleet_schema`). Each backend keeps
its features beyond rows in modules beside it (`sqlite_keys`, `postgres_admission`, ...).

Failures a backend cannot help are instances of `backend.unavailable`: the ledger sink
spools the rows and replays them once writing works again. Only `postgres` imports asyncpg,
and only when a PostgreSQL ledger is opened.
"""

from __future__ import annotations

from proxy.backends.base import ExportCursor, FleetBackend, LedgerBackend
from proxy.backends.registry import (
    BACKENDS,
    LedgerUrl,
    UnknownLedger,
    mask_url,
    open_backend,
    parse_url,
)

__all__ = ["BACKENDS", "ExportCursor", "FleetBackend", "LedgerBackend", "LedgerUnavailable",
           "LedgerUrl", "UnknownLedger", "mask_url", "open_backend", "parse_url"]


class LedgerUnavailable(RuntimeError):
    """The ledger cannot be opened at start-up (the message names it, never a password)."""
