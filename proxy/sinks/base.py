"""The Sink interface (mitmproxy-addon style): react to records; failures are contained.

Every hook but `name` is optional: a sink implements only the hooks it needs, and the
recorder calls only those (`started` and `progress` for calls in flight, `handle` for each
finished record, `aclose` at shutdown). A sink whose handling of a record never waits also
has `observe`, the same without a coroutine: the recorder calls it instead of `handle`."""

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
