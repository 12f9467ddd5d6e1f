"""The one place background tasks are created: named, and referenced until they finish."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["spawn"]

_LIVE: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """Start `coro` as a named task and keep a strong reference to it until it ends."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _LIVE.add(task)
    task.add_done_callback(_LIVE.discard)
    return task
