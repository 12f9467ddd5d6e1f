"""Ledger backends behind one small interface: SQLite (the default, one process) and
PostgreSQL (a ledger shared by a fleet of proxies). `open_backend(target)` picks one from
`ledger.url` (`sqlite:///path`, a bare path, or `postgresql://...`).

What a backend does, all async: `open()` (connect and migrate), `write(rows)` (one
transaction: the rows, their roll-up, and on PostgreSQL the fleet's budget spend),
`recorded(call_ids)`, `reset()` after a failed write, the reads reports and the API need
(`usage`, `calls`, `spend`, `reprice`, `request_ids`, `quota_calls`), `purge(before)` for retention,
`export_cursor(sink)` (a webhook's place in the ledger: `acquire`, `rows`, `advance`,
`release`) and `aclose()`. Failures it cannot help are instances of
`backend.unavailable`: the ledger sink spools the rows and replays them once writing works
again.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.backends.postgres import PostgresBackend
    from proxy.backends.sqlite import SqliteBackend

__all__ = ["LedgerUnavailable", "is_postgres", "mask_url", "open_backend", "sqlite_path"]


class LedgerUnavailable(RuntimeError):
    """The ledger cannot be opened at start-up (the message names it, never a password)."""


def is_postgres(target: str | None) -> bool:
    return bool(target) and str(target).startswith(("postgresql://", "postgres://"))


def mask_url(url: str | None) -> str | None:
    """A database URL with its password replaced by '***'."""
    return None if url is None else re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)


def sqlite_path(target: str) -> str:
    """`sqlite:///./x.db` and `sqlite:////abs/x.db` (as SQLAlchemy spells them), or a path."""
    if target.startswith("sqlite:///"):
        return target[len("sqlite:///"):] or "./tokenbooth.db"
    return target


def open_backend(target: str) -> SqliteBackend | PostgresBackend:
    """A backend object for `target`; nothing connects until it is used."""
    if is_postgres(target):
        from proxy.backends.postgres import PostgresBackend

        return PostgresBackend(target)
    from proxy.backends.sqlite import SqliteBackend

    return SqliteBackend(sqlite_path(target))
