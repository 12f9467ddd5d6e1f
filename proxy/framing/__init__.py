"""Sans-IO framing stages: bytes in, whole frames out. Each has feed() and flush()."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from proxy.framing.decoders import ContentDecoder, make_decoder
from proxy.framing.eventstream import EventFrame, EventStreamFramer
from proxy.framing.jsonarray import JsonArrayFramer
from proxy.framing.jsonbody import JsonBodyBuffer
from proxy.framing.ndjson import NdjsonFramer
from proxy.framing.sse import SseEvent, SseFramer

__all__ = [
    "ContentDecoder",
    "EventFrame",
    "EventStreamFramer",
    "Framer",
    "JsonArrayFramer",
    "JsonBodyBuffer",
    "NamedFrame",
    "NdjsonFramer",
    "SseEvent",
    "SseFramer",
    "StreamFramer",
    "make_decoder",
]

F_co = TypeVar("F_co", covariant=True)


class NamedFrame(Protocol):
    """A frame with an event name: an SSE event, an AWS event-stream message."""

    @property
    def name(self) -> str | None: ...
    @property
    def data(self) -> bytes: ...


class Framer(Protocol[F_co]):
    """Bytes in, whole frames out (named frames, or JSON texts as bytes)."""

    def feed(self, chunk: bytes) -> Sequence[F_co]: ...
    def flush(self) -> Sequence[F_co]: ...


class StreamFramer(Framer[F_co], Protocol[F_co]):
    """A framer that can tell when it holds nothing partial (SSE, NDJSON): whole frames
    after that point may be passed over unread."""

    @property
    def idle(self) -> bool: ...
