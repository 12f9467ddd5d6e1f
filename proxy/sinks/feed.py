"""The live feed: per-subscriber bounded queues; a slow subscriber loses its oldest events.

On a shared ledger, `relay` (set by the fleet) carries this replica's events (started,
progress, finished) to the others while any replica has a watcher, and `deliver` hands
theirs to the subscribers here. A new subscriber here is announced at once (`on_watch`):
the other replicas start relaying without waiting for a heartbeat, and announce the calls
they have in flight (`watched_elsewhere`), so the new watcher sees the whole fleet. The
announcement's future (`Subscription.announced`) is done once it has come back through the
shared ledger, that is once the other replicas have been sent it too: the page's snapshot
waits for that (bounded), so a call finished elsewhere right after is not missed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from proxy.record import CallRecord, LiveCall

__all__ = ["Broadcaster", "Subscription"]


class Subscription:
    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(size)
        self.dropped = 0
        # on a fleet: done when the other replicas have been told of this watcher
        self.announced: asyncio.Future[None] | None = None

    def put(self, event: tuple[str, str]) -> None:
        while True:
            try:
                self.queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                try:
                    self.queue.get_nowait()
                    self.dropped += 1
                except asyncio.QueueEmpty:  # pragma: no cover - raced empty
                    return


class Broadcaster:
    name = "feed"

    def __init__(self, queue_size: int = 1000) -> None:
        self._subs: set[Subscription] = set()
        self._size = queue_size
        self.dropped = 0
        self.relay: Callable[[str, str], None] | None = None
        # a subscriber arrived here: tell the fleet (a future done once it has been told)
        self.on_watch: Callable[[], asyncio.Future[None] | None] | None = None
        self.remote_watchers = 0  # subscribers on other replicas (from the heartbeat)
        self.remote_until = 0.0  # monotonic: a watcher elsewhere just announced itself
        self.calls: Mapping[str, LiveCall] = {}  # this replica's calls in flight

    @property
    def remote_active(self) -> bool:
        # the clock read only once a watcher elsewhere announced itself (remote_until > 0):
        # every call asks `active` at its start and its end
        return self.remote_watchers > 0 or (
            self.remote_until > 0 and time.monotonic() < self.remote_until)

    @property
    def active(self) -> bool:
        return bool(self._subs) or self.remote_active

    @property
    def local_watchers(self) -> int:
        return len(self._subs)

    def subscribe(self) -> Subscription:
        sub = Subscription(self._size)
        self._subs.add(sub)
        if self.on_watch is not None:
            sub.announced = self.on_watch()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        self.dropped += sub.dropped

    def publish(self, kind: str, payload: Any, relay: bool = True) -> None:
        if not self.active:
            return
        event = (kind, json.dumps(payload, ensure_ascii=False, default=str))
        for sub in self._subs:
            sub.put(event)
        if relay and self.relay is not None and self.remote_active:
            self.relay(*event)

    def deliver(self, kind: str, data: str) -> None:
        """An event from another replica."""
        for sub in self._subs:
            sub.put((kind, data))

    def watched_elsewhere(self, grace: float) -> None:
        """A watcher arrived on another replica: relay from now (the heartbeat confirms it
        within `grace` seconds), starting with every call in flight here."""
        self.remote_until = time.monotonic() + grace
        if self.relay is None:
            return
        for call in list(self.calls.values()):
            self.relay("call_started", json.dumps(call.to_json(), ensure_ascii=False,
                                                  default=str))

    # With nobody watching (the usual case) no event is even built.

    def started(self, call: LiveCall) -> None:
        if self.active:
            self.publish("call_started", call.to_json())

    def progress(self, call: LiveCall) -> None:
        if self.active:
            self.publish("call_progress", call.to_json())

    def observe(self, record: CallRecord) -> None:
        if self.active:
            self.publish("call_finished", record.to_json())

    async def aclose(self) -> None:
        self._subs.clear()
