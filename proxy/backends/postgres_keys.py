"""Consumer keys on the fleet's ledger (`tb_keys`, rows as `schema.KEY_COLUMNS`;
`proxy/keyring.py` uses them): `PgKeys` is the part of `PostgresBackend` that stores,
changes and reads them. A change moves `tb_keys_version` and NOTIFYs `KEYS_CHANNEL` in
its own transaction; the backend's `watch_keys` listens on that channel."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from proxy.backends import query
from proxy.backends.schema import COST_SCALE, KEY_COLUMNS

__all__ = ["KEYS_CHANNEL", "PgKeys"]

KEYS_CHANNEL = "tokenbooth_keys"  # a key was created, changed, revoked or rotated


class PgKeys:
    """`PostgresBackend`'s consumer keys (a base of that class, nothing on its own)."""

    kind: str

    if TYPE_CHECKING:  # the backend's own (`PostgresBackend`)
        async def _get_pool(self) -> Any: ...

        async def _fetch(self, sql: str, args: Sequence[Any]) -> list[Any]: ...

    # Consumer keys: a change moves `tb_keys_version` and NOTIFYs KEYS_CHANNEL in its own
    # transaction (delivered when it commits), so every replica reloads at once.

    async def keys(self) -> tuple[int, list[dict[str, Any]]]:
        pool = await self._get_pool()
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                            readonly=True):
            version = await conn.fetchval("SELECT version FROM tb_keys_version")
            rows = await conn.fetch(f"SELECT {', '.join(KEY_COLUMNS)} FROM tb_keys "
                                    f"ORDER BY created_at, id")
        return int(version), [dict(r) for r in rows]

    async def keys_version(self) -> int:
        pool = await self._get_pool()
        return int(await pool.fetchval("SELECT version FROM tb_keys_version"))

    def keys_signature(self) -> None:
        return None  # a server's tables: ask (NOTIFY tells of changes at once anyway)

    async def _change_keys(self, sql: str, args: Sequence[Any], key_id: str) -> int:
        pool = await self._get_pool()
        async with pool.acquire() as conn, conn.transaction():
            status = await conn.execute(sql, *args)
            n = int(status.split()[-1])
            if n:
                await conn.execute("UPDATE tb_keys_version SET version = version + 1")
                await conn.execute("SELECT pg_notify($1, $2)", KEYS_CHANNEL, key_id)
        return n

    async def add_key(self, row: Mapping[str, Any]) -> None:
        await self._change_keys(
            f"INSERT INTO tb_keys ({', '.join(KEY_COLUMNS)}) VALUES "
            f"({', '.join(f'${i}' for i in range(1, len(KEY_COLUMNS) + 1))})",
            [row[k] for k in KEY_COLUMNS], str(row["id"]))

    async def change_key(self, key_id: str, fields: Mapping[str, Any]) -> bool:
        cols = [k for k in fields if k in KEY_COLUMNS and k != "id"]
        sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(cols, start=2))
        return bool(await self._change_keys(f"UPDATE tb_keys SET {sets} WHERE id = $1",
                                            [key_id, *(fields[k] for k in cols)], key_id))

    async def key_calls(self, key_id: str, since: str) -> tuple[int, Decimal]:
        sql, args = query.key_calls_sql(self.kind, key_id, since)
        row = (await self._fetch(sql, args))[0]
        return int(row[0]), Decimal(row[1] or 0) / COST_SCALE

    async def keys_last_used(self) -> dict[str, str]:
        rows = await self._fetch(query.KEYS_LAST_USED, ())
        return {r[0]: r[1] for r in rows if r[1] is not None}
