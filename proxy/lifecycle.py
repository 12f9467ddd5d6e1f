"""Readiness and draining: what /readyz reports and what SIGTERM waits for (and cuts)."""

from __future__ import annotations

import asyncio
import time

__all__ = ["Lifecycle"]


class Lifecycle:
    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.cutting = False  # past the drain deadline: remaining calls are being cut
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[object]] = set()  # the in-flight calls' handlers

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)

    def leave(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.discard(task)
        self.inflight -= 1
        if self.inflight <= 0:
            self.inflight = 0
            self._idle.set()

    async def wait_idle(self, deadline_seconds: float) -> bool:
        """Wait for in-flight calls to end; False when the deadline came first."""
        end = time.monotonic() + deadline_seconds
        while self.inflight > 0:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._idle.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def cut(self, seconds: float) -> bool:
        """Cancel every call still in flight (each records itself as cut when `cutting`)
        and wait up to `seconds` for them to end; False if some did not."""
        for task in self._tasks:
            task.cancel()
        return await self.wait_idle(seconds)
