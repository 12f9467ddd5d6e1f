"""Export sinks: every finished call record handed on, as the ledger row in JSON (cost
`null` when unpriced, `0` when free: the record every other sink reads).

- `webhook`: delivers from the ledger itself. A cursor per sink, stored in the ledger,
  names the last row delivered; the sink reads the rows after it in bounded batches, POSTs
  each as a JSON array (`X-Tokenbooth-Signature: sha256=<hex HMAC of the body>` when a
  secret is set, `Idempotency-Key` the SHA-256 of the body: one key names one batch's
  exact content, and a retry resends that same batch with that same key) and moves the
  cursor only on a 2xx. So whatever the ledger holds is delivered at least once, in order,
  across a receiver that is down, a crash or a restart, with nothing held in memory beyond
  one batch. The sink wakes when the ledger writes and polls as a fallback (rows other
  replicas wrote). On PostgreSQL one replica at a time delivers a given sink (an advisory
  lock); another takes over when it dies.
- `jsonl`: appended, one record a line, rotated past `max_bytes` (`keep` files kept).
- `stdout`: one record a line.
`jsonl` and `stdout` belong to their process (a file or stream of this replica's calls),
so they stay live: a bounded queue (`queue_records`) on the sink's own task, records past
it dropped and counted. Writes happen off the request path, in batches.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from proxy.config import ExportConfig
from proxy.record import COLUMNS, CallRecord
from proxy.tasks import spawn

__all__ = ["ExportSink", "WebhookSink", "make_exports", "row_json", "signature"]

log = logging.getLogger("tokenbooth.export")
BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
POLL_SECONDS = 1.0  # new rows another replica wrote (this one's writes wake the sink)
LEASE_SECONDS = 5.0  # how often a replica not delivering a sink tries to take it over
CLOSE_SECONDS = 10.0  # at shutdown: delivering what the ledger holds, at most this long


def signature(secret: str, body: bytes) -> str:
    """`X-Tokenbooth-Signature`'s value: `sha256=<hex HMAC-SHA256 of the body>` (the export
    webhook's and the budget notices')."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def record_line(record: CallRecord) -> str:
    return _LINE(record.to_json())


# json.dumps with options builds a new encoder each call: one, built once, for every record
_LINE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def row_json(row: tuple[Any, ...]) -> dict[str, Any]:
    """A ledger row (COLUMNS order) as `CallRecord.to_json()` has it."""
    out = dict(zip(COLUMNS, row, strict=True))
    out["stream"] = bool(out["stream"])
    out["tags"] = json.loads(out["tags"]) if out["tags"] else {}
    out["priced_units"] = json.loads(out["priced_units"]) if out["priced_units"] else {}
    return out


@dataclass(frozen=True)
class Batch:
    """One POST, fixed once read: resent byte for byte, with the same key, until a 2xx."""

    body: bytes
    key: str
    records: int
    position: Any  # the cursor after its last row


class WebhookSink:
    """Delivers the ledger's rows after its cursor; see the module docstring."""

    def __init__(self, cfg: ExportConfig, name: str,
                 on_result: Callable[[str, str, int], None], key: str) -> None:
        self.cfg = cfg
        self.name = name
        self.key = key  # the cursor's name in the ledger
        self._on_result = on_result
        self._cursor: Any = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0
        self.delivering = False  # this replica holds the sink

    def start(self, ledger: Any) -> None:
        """Start delivering from `ledger` (opened)."""
        self._cursor = ledger.export_cursor(self.key)
        ledger.on_written.append(self._wake.set)
        self._task = spawn(self._run(), name=f"tokenbooth-export-{self.name}")

    async def _idle(self, seconds: float, wake: bool = True) -> None:
        """Wait `seconds`, less when the ledger writes (`wake`) or shutdown starts."""
        waits = [asyncio.ensure_future(self._stop.wait())]
        if wake:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _batch(self, rows: list[tuple[Any, tuple[Any, ...]]]) -> Batch:
        body = json.dumps([row_json(r) for _, r in rows], ensure_ascii=False,
                          separators=(",", ":")).encode()
        return Batch(body, hashlib.sha256(body).hexdigest(), len(rows), rows[-1][0])

    async def _run(self) -> None:
        failures = 0
        batch: Batch | None = None
        cursor = self._cursor
        try:
            while True:
                try:
                    if batch is None:
                        self.delivering = await cursor.acquire()
                        if not self.delivering:  # another replica delivers this sink
                            if self._stop.is_set():
                                return
                            await self._idle(LEASE_SECONDS, wake=False)
                            continue
                        self._wake.clear()  # a write from here on wakes the next wait
                        rows = await cursor.rows(self.cfg.batch)
                        if not rows:
                            if self._stop.is_set():
                                return
                            await self._idle(POLL_SECONDS)
                            continue
                        batch = self._batch(rows)
                except cursor.unavailable as exc:  # the ledger: reconnect and read again
                    await cursor.release()
                    error: BaseException = exc
                else:
                    try:
                        await self._post(batch)
                    except Exception as exc:  # the same batch, the same key, once more
                        error = exc
                    else:
                        failures = 0
                        self.sent += batch.records
                        self._on_result(self.name, "sent", batch.records)
                        position, batch = batch.position, None
                        try:
                            await cursor.advance(position)
                        except cursor.unavailable as exc:  # re-read: same body, same key
                            log.warning("export %s: cursor not saved (%s)", self.name, exc)
                            await cursor.release()
                        continue
                if self._stop.is_set() and failures >= 2:
                    log.warning("export %s: stopping with records undelivered (%s); the "
                                "next run delivers them from the ledger", self.name, error)
                    return
                delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                failures += 1
                log.warning("export %s failed (%s); retrying in %gs", self.name, error, delay)
                await self._idle(delay, wake=False)
        finally:
            self.delivering = False
            await cursor.release()

    async def _post(self, batch: Batch) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30), trust_env=False)
        headers = {"Content-Type": "application/json", "Idempotency-Key": batch.key}
        if self.cfg.secret:
            headers["X-Tokenbooth-Signature"] = signature(self.cfg.secret, batch.body)
        assert self.cfg.url is not None
        async with self._session.post(self.cfg.url, data=batch.body, headers=headers,
                                      allow_redirects=False) as resp:
            await resp.read()
            if not 200 <= resp.status < 300:
                raise RuntimeError(f"receiver answered {resp.status}")

    async def aclose(self) -> None:
        """Deliver what the ledger holds (bounded); the rest waits in the ledger."""
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, CLOSE_SECONDS)
            except TimeoutError:
                log.warning("export %s: shutdown before the ledger was delivered; the next "
                            "run goes on from its cursor", self.name)
        if self._session is not None:
            await self._session.close()


class ExportSink:
    """A live export (jsonl, stdout): a bounded queue and a writer task; `_deliver` is the
    kind's own."""

    def __init__(self, cfg: ExportConfig, name: str,
                 on_result: Callable[[str, str, int], None]) -> None:
        self.cfg = cfg
        self.name = name
        self._on_result = on_result
        self._queue: deque[str] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.sent = 0
        self.dropped = 0

    async def handle(self, record: CallRecord) -> None:
        if len(self._queue) >= self.cfg.queue_records:
            self._drop(1, "queue full")
            return
        self._queue.append(record_line(record))
        self._wake.set()
        if self._task is None:
            self._task = spawn(self._run(), name=f"tokenbooth-export-{self.name}")

    def _drop(self, n: int, why: str) -> None:
        log.error("export %s: %d records dropped (%s)", self.name, n, why)
        self.dropped += n
        self._on_result(self.name, "dropped", n)

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue[i] for i in range(min(self.cfg.batch, len(self._queue)))]
            try:
                await self._deliver(batch)
            except Exception as exc:  # a failed write is retried
                if self._closing and failures >= 2:
                    self._drop(len(self._queue), f"shutdown: {exc}")
                    self._queue.clear()
                    return
                delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                failures += 1
                log.warning("export %s failed (%s); retrying in %gs with %d waiting",
                            self.name, exc, delay, len(self._queue))
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                continue
            failures = 0
            for _ in batch:
                self._queue.popleft()
            self.sent += len(batch)
            self._on_result(self.name, "sent", len(batch))

    async def _deliver(self, lines: list[str]) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except TimeoutError:
                self._drop(len(self._queue), "shutdown")


class JsonlSink(ExportSink):
    async def _deliver(self, lines: list[str]) -> None:
        await asyncio.to_thread(self._append, lines)

    def _append(self, lines: list[str]) -> None:
        """Append whole lines; rotate before a line that would pass `max_bytes`."""
        assert self.cfg.path is not None
        path = Path(self.cfg.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size if path.exists() else 0
        chunk: list[bytes] = []
        for line in lines:
            data = f"{line}\n".encode()
            if size and size + len(data) > self.cfg.max_bytes:
                self._write(path, chunk)
                chunk, size = [], 0
                self._rotate(path)
            chunk.append(data)
            size += len(data)
        self._write(path, chunk)

    @staticmethod
    def _write(path: Path, chunk: list[bytes]) -> None:
        if chunk:
            with open(path, "ab") as f:
                f.write(b"".join(chunk))

    def _rotate(self, path: Path) -> None:
        for i in range(self.cfg.keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
        os.replace(path, path.with_name(f"{path.name}.1"))
        path.with_name(f"{path.name}.{self.cfg.keep + 1}").unlink(missing_ok=True)


class StdoutSink(ExportSink):
    async def _deliver(self, lines: list[str]) -> None:
        await asyncio.to_thread(self._write, "".join(f"{line}\n" for line in lines))

    @staticmethod
    def _write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()


_LIVE: dict[str, type[ExportSink]] = {"jsonl": JsonlSink, "stdout": StdoutSink}


def make_exports(configs: tuple[ExportConfig, ...], on_result: Callable[[str, str, int], None]
                 ) -> list[WebhookSink | ExportSink]:
    """The sinks, named by kind and place (`webhook0`, metric labels); a webhook's cursor
    is named by its URL (a hash: no token in a URL lands in the ledger), so reordering the
    config keeps each receiver's place."""
    sinks: list[WebhookSink | ExportSink] = []
    seen: dict[str, int] = {}
    for i, c in enumerate(configs):
        name = f"{c.type}{i}"
        if c.type != "webhook":
            sinks.append(_LIVE[c.type](c, name, on_result))
            continue
        assert c.url is not None
        key = "webhook:" + hashlib.sha256(c.url.encode()).hexdigest()[:16]
        n = seen[key] = seen.get(key, -1) + 1
        sinks.append(WebhookSink(c, name, on_result, f"{key}:{n}" if n else key))
    return sinks
