"""The live feed: per-subscriber bounded queues; a slow subscriber loses its oldest events.

On a shared ledger, `relay` (set by the fleet) carries this replica's started and finished
events to the others, and `deliver` hands theirs to the subscribers here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from proxy.record import CallRecord, LiveCall

__all__ = ["Broadcaster", "Subscription"]


class Subscription:
    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(size)
        self.dropped = 0

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
        self.remote_watchers = 0  # subscribers on other replicas

    @property
    def active(self) -> bool:
        return bool(self._subs) or self.remote_watchers > 0

    @property
    def local_watchers(self) -> int:
        return len(self._subs)

    def subscribe(self) -> Subscription:
        sub = Subscription(self._size)
        self._subs.add(sub)
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
        if relay and self.relay is not None and self.remote_watchers:
            self.relay(*event)

    def deliver(self, kind: str, data: str) -> None:
        """An event from another replica."""
        for sub in self._subs:
            sub.put((kind, data))

    # With nobody watching (the usual case) no event is even built.

    def started(self, call: LiveCall) -> None:
        if self.active:
            self.publish("call_started", call.to_json())

    def progress(self, call: LiveCall) -> None:
        if self._subs:  # running counts stay local: other replicas see start and finish
            self.publish("call_progress", call.to_json(), relay=False)

    async def handle(self, record: CallRecord) -> None:
        if self.active:
            self.publish("call_finished", record.to_json())

    async def aclose(self) -> None:
        self._subs.clear()
