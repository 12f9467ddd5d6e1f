"""The budget notices' outbox on the SQLite ledger (issue 20; `tb_notice`, its SQL in
`proxy.backends.notices`): `SqliteNotices` is the part of `SqliteBackend` that offers,
claims, renews and settles notices and lists them. Each statement runs on a short
connection of its own in a worker thread, never inside the ledger writer's transaction."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from proxy.backends import notices

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

__all__ = ["SqliteNotices"]

T = TypeVar("T")


class SqliteNotices:
    """`SqliteBackend`'s budget notices' outbox (a base of that class, nothing on its own)."""

    if TYPE_CHECKING:  # the backend's own (`SqliteBackend`)
        def _short(self) -> AbstractContextManager[sqlite3.Connection]: ...

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    # --- budget notices' outbox (issue 20): each statement on its own short connection in a
    # worker thread (as an export cursor's), never inside the ledger writer's transaction

    def _notice_sql(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        with self._short() as conn:
            rows = conn.execute(sql, args).fetchall()
            return [dict(zip(notices.COLUMNS, r, strict=True)) for r in rows]

    async def notice_offer(self, values: Sequence[Any]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._notice_sql, notices.OFFER, values)

    async def notice_claim(self, replica: str, now: str,
                           stale_before: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._notice_sql, notices.CLAIM,
                                       (replica, now, replica, stale_before))

    async def notice_renew(self, notice_id: int, replica: str, now: str) -> bool:
        def run() -> bool:
            with self._short() as conn:
                return conn.execute(notices.RENEW, (now, notice_id, replica)).fetchone() \
                    is not None
        return await asyncio.to_thread(run)

    async def notice_done(self, notice_id: int, replica: str, now: str,
                          error: str | None) -> None:
        if error is None:
            await asyncio.to_thread(self._notice_sql, notices.SENT, (now, notice_id, replica))
        else:
            await asyncio.to_thread(self._notice_sql, notices.FAILED,
                                    (error, now, notice_id, replica))

    async def notices(self, limit: int) -> list[dict[str, Any]]:
        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            try:
                rows = conn.execute(notices.LIST, (limit,)).fetchall()
            except sqlite3.OperationalError:  # a ledger from before the outbox
                return []
            return [notices.notice_json(r) for r in rows]
        return await self._read(run)
    # --- end budget notices
