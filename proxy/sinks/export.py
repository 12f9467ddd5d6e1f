"""Export sinks: every finished call record handed on, as the ledger row in JSON (cost
`null` when unpriced, `0` when free: the record every other sink reads).

- `webhook`: batched POSTs of a JSON array, `X-Tokenbooth-Signature: sha256=<hex HMAC of
  the body>` when a secret is set, `Idempotency-Key` the first call id of the batch. A
  receiver that is down or slow never slows a call: records wait in a bounded queue, each
  batch is retried with backoff until it is taken, in order; only records past the bound are
  dropped, and counted.
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
            self.dropped += 1
            self._on_result(self.name, "dropped", 1)
            return
        self._queue.append(record_line(record))
        self._wake.set()
        if self._task is None:
            self._task = spawn(self._run(), name=f"tokenbooth-export-{self.name}")

    @property
    def pending(self) -> int:
        return len(self._queue)

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
            except Exception as exc:  # a failed delivery is retried: nothing is skipped
                if self._closing and failures >= 2:
                    log.error("export %s: %d records not delivered at shutdown (%s)",
                              self.name, len(self._queue), exc)
                    self._on_result(self.name, "dropped", len(self._queue))
                    self._queue.clear()
                    return
                delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                failures += 1
                log.warning("export %s failed (%s); retrying in %gs with %d waiting",
                            self.name, exc, delay, len(self._queue))
                await asyncio.sleep(delay)
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


def make_exports(configs: tuple[ExportConfig, ...],
                 on_result: Callable[[str, str, int], None]) -> list[ExportSink]:
    return [_KINDS[c.type](c, f"{c.type}{i}", on_result) for i, c in enumerate(configs)]
