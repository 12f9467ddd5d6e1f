"""Server-Sent Events framing: bytes -> SseEvent(name, data).

LF, CRLF and CR line ends (a CR at the end of one chunk may pair with an LF that starts
the next), comments, multi-line `data:` joined with LF, events split anywhere. Data stays
bytes: UTF-8 is decoded by the JSON parser, once the event is whole. A chunk with no line
end is only appended, so a several-MiB event costs linear time.
"""

from __future__ import annotations

from proxy.value import value

__all__ = ["SseEvent", "SseFramer"]


@value
class SseEvent:
    name: str | None
    data: bytes


class SseFramer:
    def __init__(self, max_event_bytes: int = 64 << 20) -> None:
        self._parts: list[bytes] = []
        self._pending_cr = False
        self._name: str | None = None
        self._data: list[bytes] = []
        self._size = 0
        self._max = max_event_bytes
        self.oversized = 0

    @property
    def idle(self) -> bool:
        """At an event boundary: nothing partial is held."""
        return not self._parts and not self._data and self._name is None and \
            not self._pending_cr

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if chunk.find(b"\r") >= 0:
            if chunk[-1:] == b"\r":
                self._pending_cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if chunk.find(b"\n") < 0:
            if chunk:
                self._parts.append(chunk)
                self._size += len(chunk)
                if self._size > self._max:
                    self._drop_oversized()
            return []
        if self._parts:
            self._parts.append(chunk)
            chunk = b"".join(self._parts)
            self._parts = []
            self._size = 0
        events: list[SseEvent] = []
        if not self._data and self._name is None:
            chunk = self._whole_events(chunk, events)
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if tail:
            self._parts.append(tail)
            self._size = len(tail)
        for line in lines:
            self._line(line, events)
        return events

    def _whole_events(self, chunk: bytes, events: list[SseEvent]) -> bytes:
        """Fast path for the common shapes, `data: X` and `event: N` + `data: X` events,
        taken only at an event boundary; returns what is left for the line parser."""
        pos = 0
        find = chunk.find
        while (end := find(b"\n\n", pos)) >= 0:
            block = chunk[pos:end]
            nl = block.find(b"\n")
            if nl < 0 and block[:6] == b"data: ":
                events.append(SseEvent(None, block[6:]))
            elif (nl >= 0 and block[:7] == b"event: " and block[nl + 1:nl + 7] == b"data: "
                  and block.find(b"\n", nl + 1) < 0):
                events.append(SseEvent(block[7:nl].decode("utf-8", "replace"),
                                       block[nl + 7:]))
            else:
                for line in block.split(b"\n"):
                    self._line(line, events)
                self._line(b"", events)
            pos = end + 2
        return chunk[pos:] if pos else chunk

    def flush(self) -> list[SseEvent]:
        """End of stream: a last event without its blank line still counts."""
        events: list[SseEvent] = []
        if self._parts:
            self._line(b"".join(self._parts), events)
            self._parts = []
        self._line(b"", events)
        return events

    def _drop_oversized(self) -> None:
        self._parts = []
        self._size = 0
        self._data = []
        self.oversized += 1

    def _line(self, line: bytes, events: list[SseEvent]) -> None:
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                events.append(SseEvent(self._name, data))
            self._name = None
            self._data = []
            return
        if line[:1] == b":":
            return
        if line[:1] in (b"{", b"["):
            # Gemini sends stream errors as raw JSON without a data: prefix; no SSE field
            # name starts with a brace, so such a line is data.
            self._data.append(line)
            return
        field, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._name = value.decode("utf-8", "replace")
