"""Consumer keys on the SQLite ledger (`tb_keys`, rows as `schema.KEY_COLUMNS`;
`proxy/keyring.py` uses them): `SqliteKeys` is the part of `SqliteBackend` that stores,
changes and reads them. Each change is a short transaction of its own that moves
`tb_keys_version`, since the CLI changes keys from another process; a serving process
notices a change by the file's signature (two stat() calls) and the version."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from proxy.backends import query
from proxy.backends.schema import COST_SCALE, KEY_COLUMNS

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

__all__ = ["SqliteKeys"]

T = TypeVar("T")


class SqliteKeys:
    """`SqliteBackend`'s consumer keys (a base of that class, nothing on its own)."""

    path: str
    kind: str
    _keys_conn: sqlite3.Connection | None = None  # the keys poll's (`keys_version`)

    if TYPE_CHECKING:  # the backend's own (`SqliteBackend`)
        def _short(self) -> AbstractContextManager[sqlite3.Connection]: ...

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        def _readonly(self, shared: bool = False) -> sqlite3.Connection: ...


    # Consumer keys: written in short transactions of their own (the CLI writes from another
    # process); serving processes poll `keys_version()`.

    def _change(self, work: Callable[[sqlite3.Connection], int]) -> int:
        with self._short() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                n = work(conn)
                if n:
                    conn.execute("UPDATE tb_keys_version SET version = version + 1")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return n

    async def keys(self) -> tuple[int, list[dict[str, Any]]]:
        def run(c: sqlite3.Connection) -> tuple[int, list[dict[str, Any]]]:
            version = c.execute("SELECT version FROM tb_keys_version").fetchone()[0]
            rows = c.execute(f"SELECT {', '.join(KEY_COLUMNS)} FROM tb_keys "
                             f"ORDER BY created_at, id").fetchall()
            return int(version), [dict(r) for r in rows]
        return await self._read(run)

    async def keys_version(self) -> int:
        """Read on a read-only connection kept open for the poll: the poll asks after every
        ledger write (the write moves the signature), and opening a read connection costs
        ~450 µs CPU, mostly reading the schema. A read connection of its own, not the
        writer's: in WAL mode it never waits for a write (ours, or another process's
        holding the lock)."""
        return await asyncio.to_thread(self._keys_version)

    def _keys_version(self) -> int:
        """In a worker thread; one poll at a time (the keys registry's loop awaits each)."""
        conn = self._keys_conn
        if conn is None:
            conn = self._keys_conn = self._readonly(shared=True)
        try:
            return int(conn.execute("SELECT version FROM tb_keys_version").fetchone()[0])
        except BaseException:
            self._keys_conn = None  # the next poll starts on a fresh connection
            conn.close()
            raise

    def _close_keys(self) -> None:
        conn, self._keys_conn = self._keys_conn, None
        if conn is not None:
            conn.close()

    def keys_signature(self) -> tuple[int, ...]:
        """The database file's and its write-ahead log's identity, size and change time: a
        write by any process (the CLI's key changes) moves one of them. Two stat() calls
        on the loop instead of a read connection in a thread (~250 µs CPU) every poll."""
        out: list[int] = []
        for name in (self.path, f"{self.path}-wal"):
            try:
                st = os.stat(name)
            except OSError:
                out += (0, 0, 0)
                continue
            out += (st.st_ino, st.st_size, st.st_mtime_ns)
        return tuple(out)

    async def add_key(self, row: Mapping[str, Any]) -> None:
        sql = (f"INSERT INTO tb_keys ({', '.join(KEY_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(KEY_COLUMNS))})")
        await asyncio.to_thread(self._change, lambda c: c.execute(
            sql, [row[k] for k in KEY_COLUMNS]).rowcount)

    async def change_key(self, key_id: str, fields: Mapping[str, Any]) -> bool:
        cols = [k for k in fields if k in KEY_COLUMNS and k != "id"]
        sql = f"UPDATE tb_keys SET {', '.join(f'{k} = ?' for k in cols)} WHERE id = ?"
        return bool(await asyncio.to_thread(self._change, lambda c: c.execute(
            sql, [*(fields[k] for k in cols), key_id]).rowcount))

    async def key_calls(self, key_id: str, since: str) -> tuple[int, Decimal]:
        sql, args = query.key_calls_sql(self.kind, key_id, since)
        row = await self._read(lambda c: c.execute(sql, args).fetchone())
        return int(row[0]), Decimal(row[1] or 0) / COST_SCALE

    async def keys_last_used(self) -> dict[str, str]:
        rows = await self._read(lambda c: c.execute(query.KEYS_LAST_USED).fetchall())
        return {r[0]: r[1] for r in rows if r[1] is not None}
