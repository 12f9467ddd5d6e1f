"""Sans-IO framing stages: bytes in, whole frames out. Each has feed() and flush()."""

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
    "JsonArrayFramer",
    "JsonBodyBuffer",
    "NdjsonFramer",
    "SseEvent",
    "SseFramer",
    "make_decoder",
]
