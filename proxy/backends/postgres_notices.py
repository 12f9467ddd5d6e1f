"""The budget notices' outbox on the fleet's ledger (issue 20; `tb_notice`, its SQL in
`proxy.backends.notices`): `PgNotices` is the part of `PostgresBackend` that offers,
claims, renews and settles notices and lists them, each statement on a pooled
connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from proxy.backends import notices
from proxy.backends.postgres_sql import pg

__all__ = ["PgNotices"]


class PgNotices:
    """`PostgresBackend`'s budget notices' outbox (a base of that class, nothing on its
    own)."""

    if TYPE_CHECKING:  # the backend's own (`PostgresBackend`)
        async def _get_pool(self) -> Any: ...

        async def _fetch(self, sql: str, args: Sequence[Any]) -> list[Any]: ...

    # --- budget notices' outbox (issue 20)

    async def _notice_rows(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._fetch(sql, args)]

    async def notice_offer(self, values: Sequence[Any]) -> list[dict[str, Any]]:
        return await self._notice_rows(notices.OFFER, values)

    async def notice_claim(self, replica: str, now: str,
                           stale_before: str) -> list[dict[str, Any]]:
        return await self._notice_rows(notices.CLAIM, (replica, now, replica, stale_before))

    async def notice_renew(self, notice_id: int, replica: str, now: str) -> bool:
        pool = await self._get_pool()
        return await pool.fetchval(pg(notices.RENEW), now, notice_id, replica) is not None

    async def notice_done(self, notice_id: int, replica: str, now: str,
                          error: str | None) -> None:
        pool = await self._get_pool()
        if error is None:
            await pool.execute(pg(notices.SENT), now, notice_id, replica)
        else:
            await pool.execute(pg(notices.FAILED), error, now, notice_id, replica)

    async def notices(self, limit: int) -> list[dict[str, Any]]:
        return [notices.notice_json(r) for r in await self._fetch(notices.LIST, (limit,))]
    # --- end budget notices
