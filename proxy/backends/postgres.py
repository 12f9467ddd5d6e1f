"""The PostgreSQL backend (asyncpg): a ledger, budgets and a live feed shared by a fleet.

Writes: a batch is COPYed into a per-connection temp table, then one statement
(`postgres_sql.WRITE`) inserts the new rows (`ON CONFLICT (call_id) DO NOTHING`: a replay is
exactly once), folds exactly those rows into the hourly roll-up, releases their budget
reservations and charges their cost to every fleet budget they match, all in the batch's
transaction.

Budgets and rate limits (admission's store), consumer keys and the budget notices' outbox
are the class's parts in `postgres_admission`, `postgres_keys` and `postgres_notices`.

Live feed: events go out with NOTIFY on `tokenbooth_live` (batched, from a background task,
never in a call's path) and come in on a LISTEN connection.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import asyncpg

from proxy.backends import mask_url, query
from proxy.backends.base import FleetBackend
from proxy.backends.postgres_admission import STALE_SECONDS, PgAdmission
from proxy.backends.postgres_keys import KEYS_CHANNEL, PgKeys
from proxy.backends.postgres_notices import PgNotices
from proxy.backends.postgres_sql import COLS, LOCK, STAGE, WRITE, pg
from proxy.backends.schema import COST_SCALE, PG_MIGRATIONS, rollups
from proxy.record import COLUMNS

__all__ = ["CHANNEL", "PgExportCursor", "PostgresBackend"]

CHANNEL = "tokenbooth_live"
_EXPORT_LOCK = 0x7B_0075  # advisory lock class: one replica delivers a given export sink


async def _stage(conn: asyncpg.Connection) -> None:
    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} ON COMMIT DELETE ROWS AS "
                       f"SELECT {COLS} FROM llm_usage WITH NO DATA")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pooled connection's reset on release: none (see `_get_pool`)."""


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply what is missing, one replica at a time (an advisory lock)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS tb_schema (version INTEGER NOT NULL)")
        version = await conn.fetchval("SELECT max(version) FROM tb_schema") or 0
        for i, (_name, sql) in enumerate(PG_MIGRATIONS[version:], start=version + 1):
            await conn.execute(sql)
            await conn.execute("INSERT INTO tb_schema (version) VALUES ($1)", i)
    return len(PG_MIGRATIONS)


class PostgresBackend(PgAdmission, PgKeys, PgNotices):
    """A `LedgerBackend` on a server, shared by a fleet: also its `FleetBackend`."""

    kind = "postgresql"
    # A batch's commit also releases its calls' fleet reservations and charges their spend:
    # kept short, so other replicas' budgets see it soon.
    flush_seconds = 0.2
    unavailable: tuple[type[BaseException], ...] = (
        asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
    path: str | None = None  # no local file

    @property
    def fleet(self) -> PostgresBackend:
        return self

    def __init__(self, url: str, pool_size: int = 6) -> None:
        self.url = url
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._key_listener: asyncpg.Connection | None = None

    def __repr__(self) -> str:
        return f"postgresql ledger at {mask_url(self.url)}"

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            # JIT compiling the write statement costs more than running it (its cost
            # estimate is inflated by the budget join): off for our sessions (a startup
            # setting: it holds for the session)
            # A connection back in the pool keeps its session (asyncpg would otherwise
            # send RESET ALL and friends on every release: a second round trip for each
            # query); nothing here leaves session state behind: locks are the
            # transaction's, LISTEN and the export cursors' locks have connections of
            # their own, and an open transaction is still rolled back.
            self._pool = await asyncpg.create_pool(self.url, min_size=0,
                                                   max_size=self._pool_size, init=_stage,
                                                   reset=_keep_session,
                                                   command_timeout=30, timeout=5,
                                                   server_settings={"jit": "off"})
        return self._pool

    async def open(self) -> None:
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        await self._get_pool()

    async def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        pool = await self._get_pool()
        async with pool.acquire() as conn, conn.transaction():
            # shared: writers run side by side; a budget being (re)defined waits for them
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", LOCK)
            await conn.copy_records_to_table(STAGE, records=rows, columns=COLUMNS)
            await conn.execute(WRITE)

    async def reset(self, broken: bool = False) -> None:
        """A failed write rolled back with its transaction, and connections the server
        closed leave the pool by themselves. `broken`: the driver failed in a way it does
        not name (a connection may be stuck mid-operation): drop every pooled connection;
        the next use opens a new pool."""
        if broken and self._pool is not None:
            pool, self._pool = self._pool, None
            pool.terminate()

    async def recorded(self, call_ids: Sequence[str]) -> set[str]:
        pool = await self._get_pool()
        rows = await pool.fetch("SELECT call_id FROM llm_usage WHERE call_id = ANY($1::text[])",
                                list(call_ids))
        return {r[0] for r in rows}

    async def aclose(self) -> None:
        for listener in (self._listener, self._key_listener):
            if listener is not None:
                try:
                    await listener.close(timeout=2)
                except self.unavailable:
                    pass
        self._listener = self._key_listener = None
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5)
            except self.unavailable:  # TimeoutError among them
                self._pool.terminate()
            self._pool = None

    # Reads

    async def _fetch(self, sql: str, args: Sequence[Any]) -> list[asyncpg.Record]:
        pool = await self._get_pool()
        return list(await pool.fetch(pg(sql), *args))

    async def usage(self, group_by: Sequence[str], since: str | None, until: str | None,
                    filters: Mapping[str, str | None]) -> dict[str, Any]:
        sql, args = query.usage_sql(self.kind, group_by, since, until, filters)
        return query.usage_result(await self._fetch(sql, args), group_by, since, until)

    async def calls(self, since: str | None, until: str | None,
                    filters: Mapping[str, str | None], limit: int = 100,
                    call_id: str | None = None) -> list[dict[str, Any]]:
        sql, args = query.calls_sql(since, until, filters, limit, call_id)
        return [query.row_json(r) for r in await self._fetch(sql, args)]

    async def quota_calls(self, since: str | None, until: str | None) -> list[dict[str, Any]]:
        """The rows that keep quota headers, in the range, oldest first."""
        sql, args = query.quota_sql(since, until)
        return [dict(r) for r in await self._fetch(sql, args)]

    async def spend(self, match: Mapping[str, str], since: str | None) -> Decimal:
        sql, args = query.spend_sql(self.kind, match, since)
        rows = await self._fetch(sql, args)
        return Decimal(rows[0][0] or 0) / COST_SCALE

    async def spend_by_hour(self, match: Mapping[str, str], since: str) -> dict[str, Decimal]:
        sql, args = query.spend_by_hour_sql(self.kind, match, since)
        rows = await self._fetch(sql, args)
        return {r[0]: Decimal(r[1] or 0) / COST_SCALE for r in rows}

    async def reprice(self, since: str | None, until: str | None,
                      change: Callable[[list[Any]], list[tuple[float | None, float | None,
                                                               str | None, str]]],
                      columns: Sequence[str], dry_run: bool) -> None:
        w, args = query.where(since, until, {})
        rows = await self._fetch(f"SELECT {', '.join(columns)} FROM llm_usage {w}", args)
        updates = change(rows)
        if dry_run or not updates:
            return
        pool = await self._get_pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS tb_changed (call_id TEXT) "
                               "ON COMMIT DELETE ROWS")
            await conn.copy_records_to_table("tb_changed", records=[(u[3],) for u in updates])
            mine = "WHERE call_id IN (SELECT call_id FROM tb_changed)"
            for sql in rollups(self.kind, "llm_usage", mine, sign="-"):
                await conn.execute(sql)
            await conn.executemany("UPDATE llm_usage SET cost_usd = $1, list_cost_usd = $2, "
                                   "price_source = $3 WHERE call_id = $4", updates)
            for sql in rollups(self.kind, "llm_usage", mine):
                await conn.execute(sql)

    async def request_ids(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        rows = await self._fetch("SELECT upstream_request_id, usage_source FROM llm_usage "
                                 "WHERE upstream_request_id = ANY(?::text[])", [list(ids)])
        return [(r[0], r[1]) for r in rows]

    async def rows_after(self, after: int, limit: int) -> list[tuple[int, tuple[Any, ...]]]:
        """(id, row in COLUMNS order) of the next `limit` rows after id `after`."""
        rows = await self._fetch(f"SELECT id, {COLS} FROM llm_usage WHERE id > ? "
                                 f"ORDER BY id LIMIT ?", [after, limit])
        return [(r[0], tuple(r[1:])) for r in rows]

    def export_cursor(self, sink: str) -> PgExportCursor:
        return PgExportCursor(self, sink)

    async def purge(self, before: str) -> int:
        pool = await self._get_pool()
        total = 0
        while True:
            status = await pool.execute(
                "DELETE FROM llm_usage WHERE id IN (SELECT id FROM llm_usage "
                "WHERE started_at < $1 LIMIT 5000)", before)
            n = int(status.split()[-1])
            total += n
            if n < 5000:
                return total

    # The fleet

    async def secret(self) -> bytes:
        """The install's key-fingerprint secret, the same on every replica."""
        pool = await self._get_pool()
        await pool.execute("INSERT INTO tb_meta (key, value) VALUES ('key_secret', $1) "
                           "ON CONFLICT DO NOTHING", secrets.token_hex(32))
        value = await pool.fetchval("SELECT value FROM tb_meta WHERE key = 'key_secret'")
        return str(value).encode()

    async def heartbeat(self, replica: str, watchers: int) -> int:
        """Mark this replica alive; returns how many live-feed watchers the fleet has."""
        pool = await self._get_pool()
        return int(await pool.fetchval(
            "WITH me AS (INSERT INTO tb_replica (id, seen_at, watchers) VALUES ($1, now(), $2) "
            "ON CONFLICT (id) DO UPDATE SET seen_at = now(), watchers = $2) "
            "SELECT COALESCE(SUM(watchers), 0) + $2 FROM tb_replica WHERE id != $1 "
            "AND seen_at > now() - make_interval(secs => $3)", replica, watchers,
            STALE_SECONDS) or 0)

    async def notify(self, payload: str) -> None:
        pool = await self._get_pool()
        await pool.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)

    async def listen(self, callback: Callable[[str], None]) -> None:
        """Deliver every NOTIFY payload on the channel to `callback` (on the loop)."""
        if self._listener is not None and not self._listener.is_closed():
            return
        conn = await asyncpg.connect(self.url, timeout=5)
        await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, payload: callback(payload))
        self._listener = conn

    def listening(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    # Key changes anywhere in the fleet (the keys themselves: `postgres_keys`)

    async def watch_keys(self, callback: Callable[[], None]) -> None:
        """`callback` on every key change anywhere in the fleet (a connection of its own:
        the live feed's may come and go with the heartbeat)."""
        if self.watching_keys():
            return
        conn = await asyncpg.connect(self.url, timeout=5)
        await conn.add_listener(KEYS_CHANNEL, lambda _c, _pid, _ch, _payload: callback())
        self._key_listener = conn

    def watching_keys(self) -> bool:
        return self._key_listener is not None and not self._key_listener.is_closed()


class PgExportCursor:
    """Where an export sink is in the fleet's ledger, and the right to deliver it.

    The replica that holds a session advisory lock (on a connection of its own) is the one
    that delivers; when it dies its connection and lock go, and another replica takes over
    from the stored cursor. The cursor is (tx, id): a row's writing transaction id, then
    its id. Rows are read only up to the oldest transaction still running (the snapshot's
    xmin): every transaction below it has ended, and any later one gets a larger id, so no
    row can commit behind the cursor (identity ids are handed out before commit, and
    concurrent writers commit in any order)."""

    def __init__(self, backend: PostgresBackend, sink: str) -> None:
        self.backend = backend
        self.sink = sink
        self.unavailable = backend.unavailable
        self._conn: asyncpg.Connection | None = None
        self._after: tuple[str, int] | None = None

    async def acquire(self) -> bool:
        """True while this replica holds the sink (taking it when free)."""
        if self._conn is not None and not self._conn.is_closed() and self._after is not None:
            return True
        await self.release()
        conn = await asyncpg.connect(self.backend.url, timeout=5, command_timeout=30)
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))",
                                       _EXPORT_LOCK, self.sink):
                await conn.close()
                return False
            # a sink seen for the first time starts at the ledger's end: rows of every
            # transaction that has ended are behind it, rows of those running ahead
            await conn.execute(
                "INSERT INTO tb_export_cursor (sink, tx, after_id) "
                "VALUES ($1, pg_snapshot_xmin(pg_current_snapshot()), 0) "
                "ON CONFLICT DO NOTHING", self.sink)
            row = await conn.fetchrow("SELECT tx::text, after_id FROM tb_export_cursor "
                                      "WHERE sink = $1", self.sink)
        except BaseException:
            conn.terminate()
            raise
        self._conn, self._after = conn, (str(row[0]), int(row[1]))
        return True

    async def rows(self, limit: int) -> list[tuple[Any, tuple[Any, ...]]]:
        """((tx, id), row in COLUMNS order) of up to `limit` rows after the cursor."""
        assert self._conn is not None and self._after is not None
        found = await self._conn.fetch(
            f"SELECT tx::text, id, {COLS} FROM llm_usage "
            f"WHERE (tx, id) > ($1::text::xid8, $2) "
            f"AND tx < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY tx, id LIMIT $3",
            self._after[0], self._after[1], limit)
        return [((str(r[0]), int(r[1])), tuple(r[2:])) for r in found]

    async def advance(self, position: Any) -> None:
        assert self._conn is not None
        tx, after = position
        await self._conn.execute("UPDATE tb_export_cursor SET tx = $2::text::xid8, "
                                 "after_id = $3 WHERE sink = $1", self.sink, tx, after)
        self._after = (tx, after)

    async def release(self) -> None:
        """Give the sink up (closing the connection frees the lock)."""
        conn, self._conn, self._after = self._conn, None, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2)
            except self.unavailable:  # OSError among them
                conn.terminate()


if TYPE_CHECKING:  # mypy holds the class to the interface
    def _is_a_fleet_ledger(backend: PostgresBackend) -> FleetBackend:
        return backend
