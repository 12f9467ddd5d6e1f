"""The SQLite backend: one aiosqlite write connection (WAL), reads on short-lived read-only
connections in a worker thread, so a report never waits for a write. A batch's roll-up is
summed in `sqlite_rollup`; consumer keys and the budget notices' outbox are the class's
parts in `sqlite_keys` and `sqlite_notices`."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiosqlite

from proxy.backends import query
from proxy.backends.base import FleetBackend, LedgerBackend
from proxy.backends.schema import COST_SCALE, SQLITE_MIGRATIONS, rollups
from proxy.backends.sqlite_keys import SqliteKeys
from proxy.backends.sqlite_notices import SqliteNotices
from proxy.backends.sqlite_rollup import ROLLUP_ADD, ROLLUP_NEW, fold
from proxy.record import COLUMNS

__all__ = ["INSERT", "SqliteBackend", "SqliteExportCursor", "connect_readonly", "migrate"]

INSERT = (f"INSERT OR IGNORE INTO llm_usage ({', '.join(COLUMNS)}) "
          f"VALUES ({', '.join('?' * len(COLUMNS))})")
BUSY_TIMEOUT_MS = 1000
# Binding a None parameter (a row has about 15) costs the sqlite3 module two failed
# attribute lookups (`__adapt__`, `__conform__`), one of which formats an AttributeError
# message. With an adapter found for None it costs one dict hit and a C call that returns
# None, which binds NULL as before (4-10 us less per row written).
_NULL = cast("Callable[[None], None]", {}.get)  # a C call, no Python frame
sqlite3.register_adapter(type(None), _NULL)
T = TypeVar("T")


def connect_readonly(path: str, check_same_thread: bool = True) -> sqlite3.Connection:
    """A read connection for reports and the API (WAL lets it read while we write)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5,
                           check_same_thread=check_same_thread)
    conn.row_factory = sqlite3.Row
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """The ledger's schema brought up to date; `user_version` is the number of migrations
    applied. Each migration runs as one transaction with its new version, so one that fails
    midway (a full disk, a process killed) leaves the ledger as it was before it."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for i, (_name, sql) in enumerate(SQLITE_MIGRATIONS[version:], start=version + 1):
        try:
            conn.executescript(f"BEGIN;\n{sql}\n;\nPRAGMA user_version = {i};\nCOMMIT;")
        except BaseException:
            conn.rollback()  # nothing of the failed migration stays
            raise
    return len(SQLITE_MIGRATIONS)


def _write(db: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """On the connection's thread. A failure leaves the transaction open: `reset()` rolls
    it back."""
    db.execute("BEGIN IMMEDIATE")
    row = db.execute("SELECT COALESCE(MAX(id), 0) FROM llm_usage").fetchone()
    added = db.executemany(INSERT, rows).rowcount
    folded = fold(rows) if added == len(rows) else None
    if folded is None:  # some rows were there already (a replay): SQL sums the new ones
        for sql in ROLLUP_NEW:
            db.execute(sql, (row[0] if row else 0,))
    else:
        for (sql, _), values in zip(ROLLUP_ADD, folded, strict=True):
            db.executemany(sql, values)
    db.execute("COMMIT")


class SqliteBackend(SqliteNotices, SqliteKeys):
    """A `LedgerBackend` on one local file (not a fleet's: `fleet` is None)."""

    kind = "sqlite"
    unavailable: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
    fleet: FleetBackend | None = None
    # One commit a second at most: each rewrites every index page its batch touched (eight
    # indexes and two roll-ups, ~48 KiB of WAL), so at low rates frequent commits cost more
    # CPU and disk writes than the rows in them; rows reach the file within the second.
    flush_seconds = 1.0

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None

    def __repr__(self) -> str:
        return f"sqlite ledger at {self.path}"

    async def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._migrate)
        await self._connect()

    def _migrate(self) -> None:
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            migrate(conn)
        finally:
            conn.close()

    async def _connect(self) -> aiosqlite.Connection:
        if self._conn is None:
            # autocommit: `write` opens its own BEGIN IMMEDIATE, so the id it reads and the
            # rows it adds belong to one transaction
            conn = await aiosqlite.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                           isolation_level=None)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._conn = conn
        return self._conn

    async def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        conn = await self._connect()
        # The whole transaction in one trip to aiosqlite's thread (its own queue, which
        # every aiosqlite call goes through), not one trip per statement.
        await conn._execute(_write, conn._conn, rows)  # type: ignore[no-untyped-call]

    async def reset(self, broken: bool = False) -> None:
        """After a failed write: roll back and start over with a new connection. A
        connection SQLite opened read-only (the file was not writable then) stays read-only
        for good; the next one sees the file as it is now."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        try:
            await conn.close()
        except sqlite3.Error:
            pass

    async def recorded(self, call_ids: Sequence[str]) -> set[str]:
        conn = await self._connect()
        seen: set[str] = set()
        for i in range(0, len(call_ids), 500):
            part = list(call_ids[i:i + 500])
            async with conn.execute(f"SELECT call_id FROM llm_usage WHERE call_id IN "
                                    f"({','.join('?' * len(part))})", part) as cur:
                seen.update(r[0] for r in await cur.fetchall())
        return seen

    async def aclose(self) -> None:
        self._close_keys()
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # Reads: a read-only connection per call, in a worker thread.

    def _readonly(self, shared: bool = False) -> sqlite3.Connection:
        """A read-only connection to the ledger file (`shared`: used from whichever worker
        thread runs next, one at a time); a file that is not there is an error."""
        if not Path(self.path).exists():
            raise query.QueryError("--db", f"no ledger at {self.path}")
        return connect_readonly(self.path, check_same_thread=not shared)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn = self._readonly()
            try:
                return fn(conn)
            finally:
                conn.close()
        return await asyncio.to_thread(run)

    async def usage(self, group_by: Sequence[str], since: str | None, until: str | None,
                    filters: Mapping[str, str | None]) -> dict[str, Any]:
        sql, args = query.usage_sql(self.kind, group_by, since, until, filters)
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return query.usage_result(rows, group_by, since, until)

    async def calls(self, since: str | None, until: str | None,
                    filters: Mapping[str, str | None], limit: int = 100,
                    call_id: str | None = None) -> list[dict[str, Any]]:
        sql, args = query.calls_sql(since, until, filters, limit, call_id)
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return [query.row_json(r) for r in rows]

    async def quota_calls(self, since: str | None, until: str | None) -> list[dict[str, Any]]:
        """The rows that keep quota headers, in the range, oldest first."""
        sql, args = query.quota_sql(since, until)
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return [dict(r) for r in rows]

    async def spend(self, match: Mapping[str, str], since: str | None) -> Decimal:
        sql, args = query.spend_sql(self.kind, match, since)
        row = await self._read(lambda c: c.execute(sql, args).fetchone())
        return Decimal(row[0] or 0) / COST_SCALE

    async def spend_by_hour(self, match: Mapping[str, str], since: str) -> dict[str, Decimal]:
        sql, args = query.spend_by_hour_sql(self.kind, match, since)
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return {r[0]: Decimal(r[1] or 0) / COST_SCALE for r in rows}

    async def rate_rows(self, match: Mapping[str, str], since: str
                        ) -> list[tuple[str, int | None, int | None, float | None]]:
        """The calls a rate limit admitted since `since` (`query.rate_rows_sql`)."""
        sql, args = query.rate_rows_sql(self.kind, match, since)
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def reprice(self, since: str | None, until: str | None,
                      change: Callable[[list[Any]], list[tuple[float | None, float | None,
                                                               str | None, str]]],
                      columns: Sequence[str], dry_run: bool) -> None:
        """Rows in the range go to `change`, which returns (cost, list cost, source, call_id)
        for each row to rewrite; rows and roll-up change in one transaction."""
        w, args = query.where(since, until, {})

        def run() -> None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            try:
                migrate(conn)  # a ledger from before priced_units gains its columns first
                rows = conn.execute(f"SELECT {', '.join(columns)} FROM llm_usage {w}",
                                    args).fetchall()
                updates = change(rows)
                if dry_run or not updates:
                    return
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS tb_changed (call_id TEXT)")
                conn.execute("DELETE FROM tb_changed")
                conn.executemany("INSERT INTO tb_changed VALUES (?)",
                                 [(u[3],) for u in updates])
                mine = "WHERE call_id IN (SELECT call_id FROM tb_changed)"
                for sql in rollups("sqlite", "llm_usage", mine, sign="-"):
                    conn.execute(sql)
                conn.executemany("UPDATE llm_usage SET cost_usd = ?, list_cost_usd = ?, "
                                 "price_source = ? WHERE call_id = ?", updates)
                for sql in rollups("sqlite", "llm_usage", mine):
                    conn.execute(sql)
                conn.execute("COMMIT")
            finally:
                conn.close()
        await asyncio.to_thread(run)

    async def request_ids(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        """(upstream_request_id, usage_source) of rows holding any of these ids."""
        def run(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            out: list[tuple[str, str]] = []
            for j in range(0, len(ids), 500):
                part = list(ids[j:j + 500])
                out += [(r[0], r[1]) for r in conn.execute(
                    f"SELECT upstream_request_id, usage_source FROM llm_usage WHERE "
                    f"upstream_request_id IN ({','.join('?' * len(part))})", part)]
            return out
        return await self._read(run)

    async def rows_after(self, after: int, limit: int) -> list[tuple[int, tuple[Any, ...]]]:
        """(id, row in COLUMNS order) of the next `limit` rows after id `after`."""
        sql = (f"SELECT id, {', '.join(COLUMNS)} FROM llm_usage WHERE id > ? "
               f"ORDER BY id LIMIT ?")
        rows = await self._read(lambda c: c.execute(sql, (after, limit)).fetchall())
        return [(r[0], tuple(r[1:])) for r in rows]

    @contextmanager
    def _short(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own for a few statements, each in its own transaction
        (unless one is begun), closed after them."""
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000 * 5,
                               isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    def export_cursor(self, sink: str) -> SqliteExportCursor:
        return SqliteExportCursor(self, sink)

    async def purge(self, before: str) -> int:
        """Delete raw rows started before `before` (their hours stay in the roll-up). The
        newest row stays: SQLite numbers a new row after the largest id left, and an export
        cursor must never see ids handed out again."""
        conn = await self._connect()
        total = 0
        while True:  # in slices: the writer is not held up for long
            cur = await conn.execute(
                "DELETE FROM llm_usage WHERE id IN (SELECT id FROM llm_usage "
                "WHERE started_at < ? AND id < (SELECT MAX(id) FROM llm_usage) LIMIT 5000)",
                (before,))
            total += cur.rowcount
            if cur.rowcount < 5000:
                return total


class SqliteExportCursor:
    """Where an export sink is in the ledger: the last id it delivered. One process writes
    a SQLite ledger, in id order, so ids are commit order."""

    def __init__(self, backend: SqliteBackend, sink: str) -> None:
        self.backend = backend
        self.sink = sink
        self.unavailable = backend.unavailable
        self._after: int | None = None

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        """One statement in its own short transaction; returns the sink's cursor."""
        conn = sqlite3.connect(self.backend.path, timeout=BUSY_TIMEOUT_MS / 1000 * 5)
        try:
            conn.execute(sql, args)
            conn.commit()
            return int(conn.execute("SELECT after_id FROM tb_export_cursor WHERE sink = ?",
                                    (self.sink,)).fetchone()[0])
        finally:
            conn.close()

    async def acquire(self) -> bool:
        """Load the cursor; a sink seen for the first time starts at the ledger's end."""
        if self._after is None:
            self._after = await asyncio.to_thread(
                self._write, "INSERT OR IGNORE INTO tb_export_cursor (sink, after_id) "
                "SELECT ?, COALESCE(MAX(id), 0) FROM llm_usage", (self.sink,))
        return True

    async def rows(self, limit: int) -> list[tuple[Any, tuple[Any, ...]]]:
        """(position, row in COLUMNS order) of up to `limit` rows after the cursor."""
        assert self._after is not None
        return await self.backend.rows_after(self._after, limit)

    async def advance(self, position: Any) -> None:
        await asyncio.to_thread(self._write, "UPDATE tb_export_cursor SET after_id = ? "
                                "WHERE sink = ?", (int(position), self.sink))
        self._after = int(position)

    async def release(self) -> None:
        self._after = None


if TYPE_CHECKING:  # mypy holds the class to the interface
    def _is_a_ledger(backend: SqliteBackend) -> LedgerBackend:
        return backend
