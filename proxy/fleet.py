"""This replica's place in a fleet that shares a PostgreSQL ledger.

Every second: a heartbeat (it keeps this replica's budget reservations alive, and tells how
many live-feed watchers the other replicas have), then the budgets read the fleet's spend.
The live feed goes both ways over LISTEN/NOTIFY: this replica's events are queued (bounded,
oldest dropped) and sent in batches by a background task, so a call never waits for the
database; other replicas' events are handed to the local feed's subscribers. A new watcher
here sends a `watch` event at once: the others relay from then on (not from their next
heartbeat) and announce the calls they have in flight, so its view is the fleet's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections import deque

from proxy.admission.budgets import FleetBudgets
from proxy.backends import FleetBackend
from proxy.sinks.feed import Broadcaster
from proxy.tasks import spawn

__all__ = ["Fleet"]

log = logging.getLogger("tokenbooth.fleet")
INTERVAL_SECONDS = 1.0
PAYLOAD_BYTES = 7900  # NOTIFY takes up to 8000 bytes
QUEUE_EVENTS = 10_000
ECHOES_KEPT = 256  # watcher announcements waiting for their echo


class Fleet:
    def __init__(self, backend: FleetBackend, budgets: FleetBudgets, feed: Broadcaster,
                 interval: float = INTERVAL_SECONDS) -> None:
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._backend = backend
        self._budgets = budgets
        self._feed = feed
        self._interval = interval
        self._out: deque[str] = deque(maxlen=QUEUE_EVENTS)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0  # events that could not be sent to the fleet
        self._healthy = True
        self.stopping = False  # set at shutdown: the ledger closes under the heartbeat
        budgets.replica = self.replica
        feed.relay = self.send
        feed.on_watch = self._announce
        # a watcher's announcement (by its token), done when it comes back through the ledger
        self._echoes: dict[str, asyncio.Future[None]] = {}

    async def start(self) -> None:
        """Heartbeat once (this replica's reservations count from now), then run."""
        await self._beat()
        self._tasks = [spawn(self._run(), name="tokenbooth-fleet"),
                       spawn(self._send_loop(), name="tokenbooth-fleet-feed")]

    async def _beat(self) -> None:
        b = self._backend
        self._feed.remote_watchers = await b.heartbeat(self.replica, self._feed.local_watchers)
        if not b.listening():
            await b.listen(self._received)
        await self._budgets.sync()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._beat()
                if not self._healthy:
                    log.info("fleet: the shared ledger answers again")
                self._healthy = True
            except Exception as exc:  # never ends while the process lives
                if self.stopping:
                    return
                expected = isinstance(exc, self._backend.unavailable)
                if self._healthy or not expected:
                    log.warning("fleet: shared ledger unreachable (%s: %s); budgets follow "
                                "their on_ledger_down until it answers", type(exc).__name__,
                                exc)
                self._healthy = False
                if not expected:  # a driver error it does not name: start on a new pool
                    await self._backend.reset(broken=True)

    def _announce(self) -> asyncio.Future[None]:
        """Tell the others a watcher arrived here; done once the NOTIFY comes back to this
        replica's own LISTEN (the others have been sent it by then)."""
        token = secrets.token_hex(6)
        done = self._echoes[token] = asyncio.get_running_loop().create_future()
        while len(self._echoes) > ECHOES_KEPT:  # the ledger was away: never echoed
            del self._echoes[next(iter(self._echoes))]  # its page waited its bound already
        self.send("watch", token)
        return done

    def send(self, kind: str, data: str) -> None:
        """Queue one event for the other replicas (never blocks; oldest dropped)."""
        if len(self._out) == self._out.maxlen:
            self.dropped += 1
        self._out.append(f"{kind}\t{data}")
        self._wake.set()

    async def _send_loop(self) -> None:
        head = self.replica + "\n"
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._out:
                lines: list[str] = []
                size = len(head)
                while self._out and size + len(self._out[0].encode()) + 1 <= PAYLOAD_BYTES:
                    line = self._out.popleft()
                    size += len(line.encode()) + 1
                    lines.append(line)
                if not lines:  # one event too large for NOTIFY: not relayed
                    self._out.popleft()
                    self.dropped += 1
                    continue
                try:
                    await self._backend.notify(head + "\n".join(lines))
                except Exception as exc:  # the feed is best effort; the loop goes on
                    self.dropped += len(lines)
                    if not isinstance(exc, self._backend.unavailable):
                        log.warning("fleet: live-feed relay failed (%s: %s)",
                                    type(exc).__name__, exc)
                        await self._backend.reset(broken=True)

    def _received(self, payload: str) -> None:
        replica, _, body = payload.partition("\n")
        if replica == self.replica:  # ours, back: only a watcher's announcement matters
            for line in body.split("\n"):
                kind, _, data = line.partition("\t")
                done = self._echoes.pop(data, None) if kind == "watch" else None
                if done is not None and not done.done():
                    done.set_result(None)
            return
        for line in body.split("\n"):
            kind, _, data = line.partition("\t")
            if kind == "watch":  # until our heartbeats count that watcher: 3 intervals
                self._feed.watched_elsewhere(3 * self._interval)
            elif data:
                self._feed.deliver(kind, data)

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks = []
