"""The ledger sink: one writer task, a bounded queue, batched transactions, and a spool,
over either backend (`proxy/backends/`: SQLite by default, PostgreSQL for a fleet).

`observe()` only enqueues (never blocks, never fails the call). The writer flushes at least
every `flush_seconds`. When the backend refuses (locked, read-only, full, unreachable), the
batch is appended to the spool (JSON lines) and replayed once writing works again: `call_id`
is UNIQUE and a duplicate is ignored, so a replay is exactly once even if it is interrupted.

The writer never ends while the process lives: an error the backend does not know (a driver
left in a bad state by a server that went away mid-write) is handled like an outage, and the
connection is dropped so the next attempt starts on a fresh one. While rows wait in the spool
or in memory (`stuck_rows`) `/readyz` answers 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy.backends import ExportCursor, LedgerBackend, LedgerUnavailable, open_backend
from proxy.mailbox import Mailbox
from proxy.record import COLUMNS, CallRecord
from proxy.tasks import spawn

__all__ = ["Ledger"]

log = logging.getLogger("tokenbooth.ledger")
_COST, _LIST = COLUMNS.index("cost_usd"), COLUMNS.index("list_cost_usd")
BATCH_ROWS = 20_000
RETRY_SECONDS = 0.5
RETENTION_SECONDS = 3600.0
_CALL_ID = COLUMNS.index("call_id")


class Ledger:
    name = "ledger"

    def __init__(self, target: str, *, queue_rows: int = 100_000,
                 flush_seconds: float | None = None,
                 on_rows: Callable[[str, int], None] | None = None,
                 on_error: Callable[[], None] | None = None,
                 spool_path: str | None = None, retention_days: float | None = None) -> None:
        """`target`: a SQLite path or a `ledger.url`. `retention_days`: raw rows older than
        this are deleted (hourly); their hours stay in the roll-up."""
        self.backend: LedgerBackend = open_backend(target)
        self.path = self.backend.path  # SQLite's file
        self.spool_path = Path(spool_path or f"{self.path or 'tokenbooth-ledger'}.spool")
        # Rows neither the database nor the spool would take (a full disk): held here,
        # retried, and dropped (counted) only past `queue_rows`.
        self.held: list[tuple[Any, ...]] = []
        self._hold_limit = queue_rows
        # None: the backend's own (SQLite 1 s, PostgreSQL 0.2 s: see LedgerBackend)
        self.flush_seconds = self.backend.flush_seconds if flush_seconds is None \
            else flush_seconds
        self._closing = asyncio.Event()
        self.queue: Mailbox[tuple[Any, ...] | None] = Mailbox(queue_rows)
        self._on_rows = on_rows or (lambda result, n: None)
        self._on_error = on_error or (lambda: None)
        self.spooled_rows = 0  # rows in the spool, waiting for a replay
        # told the call ids of every batch the database took (budgets on a shared ledger)
        self.on_committed: Callable[[list[str]], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.healthy = True
        self._failing: str | None = None  # the error type of this outage, logged once
        self.counts = {"written": 0, "spooled": 0, "dropped": 0}
        self._pending: set[str] = set()  # batch-line call ids handed on, maybe not written
        self.retention_days = retention_days
        self._retention: asyncio.Task[None] | None = None
        # called after every write that added rows (export sinks deliver from the ledger)
        self.on_written: list[Callable[[], None]] = []

    async def open(self) -> None:
        try:
            await self.backend.open()
        except self.backend.unavailable as exc:
            raise LedgerUnavailable(f"{self.backend!r}: {exc}") from None
        if self.spool_path.exists():  # left by a previous run: waits for its replay
            self.spooled_rows = await asyncio.to_thread(self._spool_lines)
        self._closing = asyncio.Event()  # set by aclose(): the last batch goes at once
        self._task = spawn(self._writer(), name="tokenbooth-ledger")
        if self.retention_days:
            self._retention = spawn(self._retain(), name="tokenbooth-retention")

    def export_cursor(self, sink: str) -> ExportCursor:
        """The backend's cursor of an export sink that delivers from this ledger."""
        return self.backend.export_cursor(sink)

    async def purge(self, now: datetime | None = None) -> int:
        """Delete raw rows older than the retention (from the start of that hour)."""
        assert self.retention_days
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.retention_days)
        before = cutoff.strftime("%Y-%m-%dT%H:00:00.000Z")
        n = await self.backend.purge(before)
        if n:
            log.info("retention: deleted %d raw rows started before %s (kept in the "
                     "hourly roll-up)", n, before)
        return n

    async def _retain(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception as exc:  # tried again in an hour; the task never ends
                log.warning("retention: could not delete old rows (%s: %s)",
                            type(exc).__name__, exc)
            await asyncio.sleep(RETENTION_SECONDS)

    def observe(self, record: CallRecord) -> None:
        try:
            self.queue.put_nowait(record.to_row())
        except asyncio.QueueFull:
            self._count("dropped", 1)
            log.error("ledger queue full: row for call %s dropped", record.call_id)

    def _count(self, result: str, n: int) -> None:
        self.counts[result] += n
        self._on_rows(result, n)

    async def _put(self, rows: list[tuple[Any, ...]]) -> None:
        await self.backend.write(rows)
        if self.on_committed is not None:
            self.on_committed([row[_CALL_ID] for row in rows])

    @property
    def stuck_rows(self) -> int:
        """Rows the database refused, waiting in the spool or in memory (0 when writing
        works)."""
        return self.spooled_rows + len(self.held)

    def writing(self) -> bool:
        """The writer task runs (it ends only at `aclose()`)."""
        return self._task is not None and not self._task.done()

    async def _writer(self) -> None:
        stop = False
        while not stop:
            rows: list[tuple[Any, ...]] = []
            try:
                if self.held or self.spool_path.exists():
                    # Spooled or held rows wait for the database to work again: retry
                    # even with no new traffic.
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
                rows.append(first)
                # Batch: let rows gather for one flush interval (cut short by aclose), then
                # take all that came.
                try:
                    async with asyncio.timeout(self.flush_seconds):
                        await self._closing.wait()
                except TimeoutError:
                    pass
                more = self.queue.take(BATCH_ROWS - 1, None)
                if more and more[-1] is None:  # the end marker (aclose): the last batch
                    stop = True
                    self.queue.task_done()
                    more.pop()
                rows += more
                await self._write(rows)
            except Exception:  # _write keeps its rows; this is a last guard for the loop
                log.exception("ledger writer: unexpected error (the writer goes on)")
                self._on_error()
                await asyncio.sleep(RETRY_SECONDS)
            finally:
                if rows:
                    self.queue.task_done(len(rows))
        if self.held or self.spool_path.exists():
            try:
                await self._write([])  # last chance before exit; what fails stays spooled
            except Exception:
                log.exception("ledger writer: unexpected error at exit (rows stay spooled)")

    async def _write(self, rows: list[tuple[Any, ...]]) -> None:
        backend = self.backend
        try:
            if self.spool_path.exists():
                await self._replay()
            if self.held:  # they stay held (and counted by /readyz) until committed
                n = len(self.held)
                await self._put(self.held[:n])
                del self.held[:n]
                log.info("wrote %d rows held in memory", n)
                self._count("written", n)
            if rows:
                await self._put(rows)
                self._count("written", len(rows))
            if not self.healthy:
                log.info("ledger writes again")
            self.healthy, self._failing = True, None
            for wake in self.on_written:
                wake()
        except Exception as exc:
            # An error the backend does not name (asyncpg's InternalClientError after a
            # fast stop, say) is an outage too: drop the connection, keep the rows, retry.
            expected = isinstance(exc, backend.unavailable)
            if not expected:
                self._on_error()
            if type(exc).__name__ != self._failing:  # once per outage and kind of error
                self._failing = type(exc).__name__
                log.log(logging.WARNING if expected else logging.ERROR,
                        "ledger write failed (%s: %s): rows wait in the spool %s and are "
                        "retried every %g s", type(exc).__name__, exc, self.spool_path,
                        RETRY_SECONDS)
            self.healthy = False
            try:
                await backend.reset(broken=not expected)
            except Exception as reset_exc:
                log.warning("ledger reset failed (%s: %s)", type(reset_exc).__name__,
                            reset_exc)
            if not rows:
                return
            try:
                await asyncio.to_thread(self._spool, rows)
                self.spooled_rows += len(rows)
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

    def _spool(self, rows: list[tuple[Any, ...]]) -> None:
        with open(self.spool_path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _spool_lines(self) -> int:
        with open(self.spool_path, "rb") as f:
            return sum(1 for _ in f)

    def _read_spool(self) -> list[tuple[Any, ...]]:
        rows = []
        with open(self.spool_path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = tuple(json.loads(line))
                    # a row spooled by an older version lacks the newer (trailing) columns
                    full = row + (None,) * (len(COLUMNS) - len(row))
                    if len(row) <= _LIST:  # from before list costs: charged the list price
                        full = full[:_LIST] + (full[_COST],) + full[_LIST + 1:]
                    rows.append(full)
                except ValueError:
                    log.error("unreadable spool line skipped")
        return rows

    async def _replay(self) -> None:
        rows = await asyncio.to_thread(self._read_spool)
        for i in range(0, len(rows), BATCH_ROWS):
            await self._put(rows[i:i + BATCH_ROWS])
        if rows:
            log.info("replayed %d spooled rows", len(rows))
            self._count("written", len(rows))
        self.spool_path.unlink(missing_ok=True)
        self.spooled_rows = 0

    async def recorded(self, call_ids: list[str]) -> set[str]:
        """Which of these call ids the ledger holds already, or has queued or spooled:
        batch result lines downloaded again must not be counted again by any sink."""
        seen = {c for c in call_ids if c in self._pending}
        ask = [c for c in call_ids if c not in seen]
        try:
            if ask:
                seen |= await self.backend.recorded(ask)
        except self.backend.unavailable as exc:
            log.warning("could not check batch lines against the ledger: %s", exc)
        self._pending.update(call_ids)
        if len(self._pending) > 200_000:  # bounded: the ledger answers for older ones
            self._pending.clear()
        return seen

    async def flush(self) -> None:
        """Wait until every row queued so far is written or spooled."""
        await self.queue.join()

    async def aclose(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
            self._retention = None
        if self._task is not None:
            await self.queue.put(None)
            self._closing.set()  # the last batch goes now, not after the flush interval
            await self._task
            self._task = None
        await self.backend.aclose()
