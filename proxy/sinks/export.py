"""Export sinks: every finished call record handed on, as the ledger row in JSON (cost
`null` when unpriced, `0` when free: the record every other sink reads).

- `webhook`: batched POSTs of a JSON array, `X-Tokenbooth-Signature: sha256=<hex HMAC of
  the body>` when a secret is set, `Idempotency-Key` the first call id of the batch. A
  receiver that is down or slow never slows a call: records wait in a bounded queue, then
  in a spool file beside the ledger (also across a restart), each batch retried with
  backoff until it is taken, in order; a record is dropped (and counted) only when even the
  spool cannot be written.
- `jsonl`: appended, one record a line, rotated past `max_bytes` (`keep` files kept).
- `stdout`: one record a line.
Writes happen off the request path, in batches, on the sink's own task.
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
from pathlib import Path
from typing import Any

import aiohttp

from proxy.config import ExportConfig
from proxy.record import CallRecord
from proxy.tasks import spawn

__all__ = ["ExportSink", "make_exports"]

log = logging.getLogger("tokenbooth.export")
BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def record_line(record: CallRecord) -> str:
    return json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":"))


class ExportSink:
    """The queue and the writer task every export shares; `_deliver` is the kind's own."""

    def __init__(self, cfg: ExportConfig, name: str,
                 on_result: Callable[[str, str, int], None], spool: Path) -> None:
        self.cfg = cfg
        self.name = name
        self._on_result = on_result
        self._queue: deque[str] = deque()
        self._overflow: list[str] = []  # past the queue's bound: on their way to the spool
        self.spool = spool
        self._spooled = spool.exists()  # records of an earlier run first, in order
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.sent = 0
        self.dropped = 0
        self.spilled = 0  # records that went through the spool

    async def handle(self, record: CallRecord) -> None:
        line = record_line(record)
        if self._spooled or self._overflow or len(self._queue) >= self.cfg.queue_records:
            self._overflow.append(line)  # behind what waits already: order kept
        else:
            self._queue.append(line)
        self._wake.set()
        if self._task is None:
            self._task = spawn(self._run(), name=f"tokenbooth-export-{self.name}")

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._overflow)

    async def _spill(self) -> None:
        """Overflow to the spool file; only what even the spool refuses is dropped."""
        lines, self._overflow = self._overflow, []
        try:
            await asyncio.to_thread(_append_lines, self.spool, lines)
            self._spooled = True
            self.spilled += len(lines)
        except OSError as exc:
            log.error("export %s: spool write failed (%s): %d records dropped", self.name,
                      exc, len(lines))
            self.dropped += len(lines)
            self._on_result(self.name, "dropped", len(lines))

    async def _refill(self) -> None:
        """The queue is empty: take the spool's oldest records (up to the bound)."""
        try:
            lines, more = await asyncio.to_thread(_take_lines, self.spool,
                                                  self.cfg.queue_records)
        except OSError as exc:
            log.error("export %s: spool unreadable (%s)", self.name, exc)
            lines, more = [], False
        self._queue.extend(lines)
        self._spooled = more

    async def _pause(self, seconds: float) -> None:
        """A backoff that still moves overflow to the spool while it waits."""
        end = asyncio.get_running_loop().time() + seconds
        while (left := end - asyncio.get_running_loop().time()) > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return
            if self._overflow:
                await self._spill()

    async def _run(self) -> None:
        failures = 0
        while True:
            if self._overflow:
                await self._spill()
            if not self._queue:
                if self._spooled:
                    await self._refill()
                    continue
                if self._closing:
                    return
                self._wake.clear()
                if not self._overflow:
                    await self._wake.wait()
                continue
            batch = [self._queue[i] for i in range(min(self.cfg.batch, len(self._queue)))]
            try:
                await self._deliver(batch)
            except Exception as exc:  # a failed delivery is retried: nothing is skipped
                if self._closing and failures >= 2:
                    await self._keep_for_next_run(exc)
                    return
                delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                failures += 1
                log.warning("export %s failed (%s); retrying in %gs with %d waiting",
                            self.name, exc, delay, self.pending)
                await self._pause(delay)
                continue
            failures = 0
            for _ in batch:
                self._queue.popleft()
            self.sent += len(batch)
            self._on_result(self.name, "sent", len(batch))

    async def _keep_for_next_run(self, exc: Exception) -> None:
        """Shutting down with a receiver still down: what waits goes to the spool, ahead of
        what is there, and the next run delivers it first."""
        waiting = list(self._queue) + self._overflow
        self._queue.clear()
        self._overflow = []
        try:
            await asyncio.to_thread(_prepend_lines, self.spool, waiting)
            log.warning("export %s: %d records spooled for the next run (%s)", self.name,
                        len(waiting), exc)
        except OSError as spool_exc:
            log.error("export %s: %d records lost at shutdown (%s)", self.name,
                      len(waiting), spool_exc)
            self._on_result(self.name, "dropped", len(waiting))

    async def _deliver(self, lines: list[str]) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except TimeoutError:
                log.error("export %s: %d records not delivered at shutdown", self.name,
                          len(self._queue))


class WebhookSink(ExportSink):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._session: aiohttp.ClientSession | None = None

    async def _deliver(self, lines: list[str]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30), trust_env=False)
        body = ("[" + ",".join(lines) + "]").encode()
        headers = {"Content-Type": "application/json",
                   "Idempotency-Key": json.loads(lines[0])["call_id"]}
        if self.cfg.secret:
            mac = hmac.new(self.cfg.secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Tokenbooth-Signature"] = f"sha256={mac}"
        assert self.cfg.url is not None
        async with self._session.post(self.cfg.url, data=body, headers=headers,
                                      allow_redirects=False) as resp:
            await resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"receiver answered {resp.status}")

    async def aclose(self) -> None:
        await super().aclose()
        if self._session is not None:
            await self._session.close()


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


_KINDS: dict[str, type[ExportSink]] = {"webhook": WebhookSink, "jsonl": JsonlSink,
                                       "stdout": StdoutSink}


def make_exports(configs: tuple[ExportConfig, ...], on_result: Callable[[str, str, int], None],
                 spool_dir: Path) -> list[ExportSink]:
    return [_KINDS[c.type](c, f"{c.type}{i}", on_result,
                           spool_dir / f"tokenbooth-export-{c.type}{i}.spool")
            for i, c in enumerate(configs)]


def _append_lines(path: Path, lines: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(f"{line}\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def _take_lines(path: Path, n: int) -> tuple[list[str], bool]:
    """The first n lines of the spool, which keeps the rest (or goes): (lines, more left)."""
    if not path.exists():
        return [], False
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    head, rest = lines[:n], lines[n:]
    if rest:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in rest), encoding="utf-8")
        os.replace(tmp, path)
    else:
        path.unlink(missing_ok=True)
    return head, bool(rest)


def _prepend_lines(path: Path, lines: list[str]) -> None:
    rest = path.read_text(encoding="utf-8") if path.exists() else ""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines) + rest, encoding="utf-8")
    os.replace(tmp, path)
