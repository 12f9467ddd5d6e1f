"""The Sink interface (mitmproxy-addon style): react to records; failures are contained.

Every hook but `name` is optional: a sink implements only the hooks it needs, and the
recorder calls only those (`started` and `progress` for calls in flight, `observe` or
`handle` for each finished record, `aclose` at shutdown). A sink whose handling of a record
never waits implements `observe` (called without a coroutine); one that must wait, `handle`
(awaited)."""

from __future__ import annotations

from typing import Protocol

from proxy.record import CallRecord, LiveCall

__all__ = ["Sink"]


class Sink(Protocol):
    name: str

    def started(self, call: LiveCall) -> None: ...
    def progress(self, call: LiveCall) -> None: ...
    async def handle(self, record: CallRecord) -> None: ...
    def observe(self, record: CallRecord) -> None: ...
    async def aclose(self) -> None: ...
