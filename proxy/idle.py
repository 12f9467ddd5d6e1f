"""The upstream idle timeout of a response body, checked lazily.

aiohttp's `sock_read` timeout cancels and re-creates a timer for every chunk received; on a
long stream that is most of the cost of the timeout. Here the relay loop only stamps the
loop time of each chunk it takes (`last`), and one timer per idle period looks at the stamp:
if the upstream sent nothing for `limit` seconds, the body read fails with a timeout.
While the relay is blocked writing to a slow client, the upstream is not to blame: the
check waits until the write is done (`writing`).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import aiohttp

__all__ = ["IdleWatch"]


class _Body(Protocol):
    """A response body being read (aiohttp's StreamReader, proxy.upstream's Body)."""

    def is_eof(self) -> bool: ...

    def set_exception(self, exc: BaseException) -> None: ...


class IdleWatch:
    __slots__ = ("_loop", "_limit", "_content", "_handle", "last", "writing")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: float,
                 content: _Body) -> None:
        self._loop = loop
        self._limit = limit
        self._content = content
        self.last = loop.time()
        self.writing = False
        # A body received whole already (a JSON answer with its head) cannot go idle: no timer.
        self._handle: asyncio.TimerHandle | None = None if content.is_eof() else \
            loop.call_at(self.last + limit, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if self.writing:
            self.last = now  # the client holds us up, not the upstream
        due = self.last + self._limit
        if now < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self._handle = None
        self._content.set_exception(aiohttp.ServerTimeoutError(
            f"upstream sent nothing for {self._limit:g}s"))

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
