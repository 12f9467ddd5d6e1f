"""A bounded FIFO from the request path to one consumer task.

What `asyncio.Queue` does for the recorder and the ledger writer (each has exactly one
consumer), at a fraction of its cost per item: `asyncio.Queue` keeps waiter deques for any
number of getters and putters and runs ~150 lines of Python per item put and taken; every
call passes through two of them. The API is the subset they use, with the same meaning
(`QueueFull`, `QueueEmpty`, `task_done`, `join`), and `take()`, a batch at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Mailbox"]

T = TypeVar("T")


class Mailbox(Generic[T]):
    __slots__ = ("maxsize", "_items", "_getter", "_space", "_unfinished", "_idle")

    def __init__(self, maxsize: int = 0) -> None:
        # 0 or less: unbounded, as asyncio.Queue
        self.maxsize: float = maxsize if maxsize > 0 else float("inf")
        self._items: deque[T] = deque()
        self._getter: asyncio.Future[None] | None = None  # the consumer, waiting for an item
        self._space: asyncio.Future[None] | None = None  # a put(), waiting for room
        self._unfinished = 0  # items put and not yet marked task_done()
        self._idle: asyncio.Event | None = None  # join()'s, set when nothing is unfinished

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T) -> None:
        if len(self._items) >= self.maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        self._unfinished += 1
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)

    async def put(self, item: T) -> None:
        """Waits for room (the shutdown's end marker, put behind everything queued)."""
        while len(self._items) >= self.maxsize:
            if self._space is None or self._space.done():
                self._space = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._space)
        self.put_nowait(item)

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if self._space is not None:  # a put() waits for room (the queue was full)
            self._room()
        return item

    def take(self, limit: int, end: T) -> list[T]:
        """The items waiting, at most `limit` and none after the first `end` (an end marker,
        taken last; `in`/`index` find it, by identity first): what a loop of get_nowait()
        stopping at `end` takes, without a Python call per item (the ledger's batch)."""
        items = self._items
        if len(items) <= limit:
            out = list(items)
            items.clear()
        else:
            out = [items.popleft() for _ in range(limit)]
        if end in out:  # what came after the end marker stays queued, in order
            cut = out.index(end) + 1
            items.extendleft(reversed(out[cut:]))
            del out[cut:]
        if out and self._space is not None:
            self._room()
        return out

    def _room(self) -> None:
        """Wake the put() waiting for room."""
        space, self._space = self._space, None
        if space is not None and not space.done():
            space.set_result(None)

    async def get(self) -> T:
        """The next item, waiting for one (one consumer: a second concurrent get() is a bug
        of the caller). Cancelled while waiting, it takes nothing."""
        items = self._items
        while not items:
            getter = self._getter = asyncio.get_running_loop().create_future()
            try:
                await getter
            finally:
                if self._getter is getter:
                    self._getter = None
        # get_nowait() inlined (one call fewer per item)
        item = items.popleft()
        if self._space is not None:
            self._room()
        return item

    def task_done(self, n: int = 1) -> None:
        """`n` items done (1, as asyncio.Queue's; more: a batch at once)."""
        if self._unfinished < n:
            raise ValueError("task_done() called too many times")
        self._unfinished -= n
        if not self._unfinished and self._idle is not None:
            self._idle.set()

    async def join(self) -> None:
        """Until every item put has been marked task_done()."""
        while self._unfinished:
            if self._idle is None or self._idle.is_set():
                self._idle = asyncio.Event()
            await self._idle.wait()
