"""The SQLite ledger: one writer task, a bounded queue, batched transactions, and a spool.

`handle()` only enqueues (never blocks, never fails the call). The writer flushes at least
every `flush_seconds`. When SQLite refuses (locked, read-only, full, missing), the batch is
appended to `<db>.spool` (JSON lines) and replayed with INSERT OR IGNORE once writing works
again: `call_id` is UNIQUE, so a replay is exactly once even if it is interrupted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite

from proxy.record import COLUMNS, CallRecord
from proxy.sinks.migrations import MIGRATIONS
from proxy.tasks import spawn

__all__ = ["Ledger", "connect_readonly"]

log = logging.getLogger("tokenbooth.ledger")
INSERT = (f"INSERT OR IGNORE INTO llm_usage ({', '.join(COLUMNS)}) "
          f"VALUES ({', '.join('?' * len(COLUMNS))})")
BATCH_ROWS = 20_000
BUSY_TIMEOUT_MS = 1000
RETRY_SECONDS = 0.5


def connect_readonly(path: str) -> sqlite3.Connection:
    """A read connection for reports and the API (WAL lets it read while we write)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for i, (_name, sql) in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(sql)
        conn.execute(f"PRAGMA user_version = {i}")
    conn.commit()
    return len(MIGRATIONS)


class Ledger:
    name = "ledger"

    def __init__(self, path: str, *, queue_rows: int = 100_000, flush_seconds: float = 0.2,
                 on_rows: Callable[[str, int], None] | None = None,
                 spool_path: str | None = None) -> None:
        self.path = path
        self.spool_path = Path(spool_path or f"{path}.spool")
        # Rows neither the database nor the spool would take (a full disk): held here,
        # retried, and dropped (counted) only past `queue_rows`.
        self.held: list[tuple[Any, ...]] = []
        self._hold_limit = queue_rows
        self.flush_seconds = flush_seconds
        self.queue: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue(queue_rows)
        self._on_rows = on_rows or (lambda result, n: None)
        self._conn: aiosqlite.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.healthy = True
        self.counts = {"written": 0, "spooled": 0, "dropped": 0}
        self._pending: set[str] = set()  # batch-line call ids handed on, maybe not written

    async def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._migrate)
        await self._connect()
        self._task = spawn(self._writer(), name="tokenbooth-ledger")

    def _migrate(self) -> None:
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            migrate(conn)
        finally:
            conn.close()

    async def _connect(self) -> None:
        if self._conn is not None:
            return
        conn = await aiosqlite.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._conn = conn

    async def handle(self, record: CallRecord) -> None:
        try:
            self.queue.put_nowait(record.to_row())
        except asyncio.QueueFull:
            self._count("dropped", 1)
            log.error("ledger queue full: row for call %s dropped", record.call_id)

    def _count(self, result: str, n: int) -> None:
        self.counts[result] += n
        self._on_rows(result, n)

    async def _writer(self) -> None:
        stop = False
        while not stop:
            if self.held or self.spool_path.exists():
                # Spooled or held rows wait for SQLite to work again: retry even with no
                # new traffic.
                try:
                    first = await asyncio.wait_for(self.queue.get(), RETRY_SECONDS)
                except TimeoutError:
                    await self._write([])
                    continue
            else:
                first = await self.queue.get()
            if first is None:
                self.queue.task_done()
                break
            rows = [first]
            # Batch: let rows gather for one flush interval, then take all that came.
            await asyncio.sleep(self.flush_seconds)
            while len(rows) < BATCH_ROWS:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    stop = True
                    self.queue.task_done()
                    break
                rows.append(item)
            try:
                await self._write(rows)
            finally:
                for _ in rows:
                    self.queue.task_done()
        if self.held or self.spool_path.exists():
            await self._write([])  # last chance before exit; what fails stays spooled

    async def _write(self, rows: list[tuple[Any, ...]]) -> None:
        try:
            await self._connect()
            assert self._conn is not None
            if self.spool_path.exists():
                await self._replay()
            if self.held:
                held, self.held = self.held, []
                try:
                    await self._conn.executemany(INSERT, held)
                    await self._conn.commit()
                except BaseException:
                    self.held = held + self.held
                    raise
                log.info("wrote %d rows held in memory", len(held))
                self._count("written", len(held))
            if rows:
                await self._conn.executemany(INSERT, rows)
                await self._conn.commit()
                self._count("written", len(rows))
            self.healthy = True
        except (sqlite3.Error, OSError) as exc:
            self.healthy = False
            await self._rollback()
            if not rows:
                return
            log.warning("ledger write failed (%s): %d rows spooled", exc, len(rows))
            try:
                await asyncio.to_thread(self._spool, rows)
                self._count("spooled", len(rows))
            except OSError as spool_exc:
                self._hold(rows, spool_exc)

    def _hold(self, rows: list[tuple[Any, ...]], exc: OSError) -> None:
        """Neither the database nor the spool takes rows (the disk is full): keep them in
        memory and retry; drop (counted) only what exceeds the bound."""
        room = max(self._hold_limit - len(self.held), 0)
        self.held.extend(rows[:room])
        if len(rows) > room:
            log.error("spool write failed (%s) and %d rows are held: %d rows dropped",
                      exc, len(self.held), len(rows) - room)
            self._count("dropped", len(rows) - room)
        else:
            log.error("spool write failed (%s): %d rows held in memory until the ledger "
                      "or the spool takes them", exc, len(self.held))

    async def _rollback(self) -> None:
        if self._conn is None:
            return
        try:
            await self._conn.rollback()
        except sqlite3.Error:
            try:
                await self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _spool(self, rows: list[tuple[Any, ...]]) -> None:
        with open(self.spool_path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _read_spool(self) -> list[tuple[Any, ...]]:
        rows = []
        with open(self.spool_path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = tuple(json.loads(line))
                    # a row spooled by an older version lacks the newer (trailing) columns
                    rows.append(row + (None,) * (len(COLUMNS) - len(row)))
                except ValueError:
                    log.error("unreadable spool line skipped")
        return rows

    async def _replay(self) -> None:
        assert self._conn is not None
        rows = await asyncio.to_thread(self._read_spool)
        if rows:
            await self._conn.executemany(INSERT, rows)
            await self._conn.commit()
            log.info("replayed %d spooled rows", len(rows))
            self._count("written", len(rows))
        self.spool_path.unlink(missing_ok=True)

    async def recorded(self, call_ids: list[str]) -> set[str]:
        """Which of these call ids the ledger holds already, or has queued or spooled:
        batch result lines downloaded again must not be counted again by any sink."""
        seen = {c for c in call_ids if c in self._pending}
        ask = [c for c in call_ids if c not in seen]
        try:
            await self._connect()
            assert self._conn is not None
            for i in range(0, len(ask), 500):
                part = ask[i:i + 500]
                async with self._conn.execute(
                        f"SELECT call_id FROM llm_usage WHERE call_id IN "
                        f"({','.join('?' * len(part))})", part) as cur:
                    seen.update(r[0] for r in await cur.fetchall())
        except sqlite3.Error as exc:
            log.warning("could not check batch lines against the ledger: %s", exc)
        self._pending.update(call_ids)
        if len(self._pending) > 200_000:  # bounded: the ledger answers for older ones
            self._pending.clear()
        return seen

    async def flush(self) -> None:
        """Wait until every row queued so far is written or spooled."""
        await self.queue.join()

    async def aclose(self) -> None:
        if self._task is not None:
            await self.queue.put(None)
            await self._task
            self._task = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
