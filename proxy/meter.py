"""Meter: the side copy of one response. content decoder -> framer -> dialect state.

Sans-IO and exception-proof: `feed()` never raises (a failure is counted and metering of
that call stops), so observing can never break forwarding.
"""

from __future__ import annotations

import logging
from typing import Any

from proxy.dialects import Dialect, Observation
from proxy.dialects.base import loads
from proxy.framing import (
    EventStreamFramer,
    JsonArrayFramer,
    JsonBodyBuffer,
    NdjsonFramer,
    SseFramer,
    make_decoder,
)

__all__ = ["Meter"]

log = logging.getLogger("tokenbooth.meter")


HOLD_BYTES = 64 * 1024  # whole chunks screened together, at the latest every this many bytes


class Meter:
    __slots__ = ("_dialect", "_decoder", "_framer", "_state", "_sse", "errors", "broken",
                 "bytes_seen", "streaming", "_quiet", "_end", "_held", "_held_bytes")

    def __init__(self, dialect: Dialect | None, content_type: str | None,
                 content_encoding: str | None, path_stream: bool = False) -> None:
        self._dialect = dialect
        self.errors = 0
        self.broken = dialect is None
        self.bytes_seen = 0
        self._sse = False
        self._state: Any = None
        self._framer: Any = None
        self._decoder = None
        self._quiet: Any = None
        self._end = b"\n\n"
        self._held: list[bytes] = []
        self._held_bytes = 0
        ct = (content_type or "").lower()
        eventstream = "vnd.amazon.eventstream" in ct
        lines = dialect is not None and dialect.framing == "ndjson"  # a batch-results file
        self.streaming = ("event-stream" in ct or "ndjson" in ct or path_stream
                          or eventstream) and not lines
        if dialect is None:
            return
        try:
            self._decoder = make_decoder(content_encoding)
        except ValueError as exc:
            log.warning("cannot meter body: %s", exc)
            self.broken = True
            self.errors += 1
            return
        if lines:
            self._framer, self._end = NdjsonFramer(), b"\n"
        elif eventstream:
            self._framer, self._sse = EventStreamFramer(), True
        elif "event-stream" in ct:
            self._framer, self._sse = SseFramer(), True
        elif "ndjson" in ct:
            self._framer, self._end = NdjsonFramer(), b"\n"
        elif path_stream:
            self._framer = JsonArrayFramer()
        else:
            self._framer = JsonBodyBuffer()
            return
        self._state = dialect.new_stream()
        if self._decoder is None and not path_stream:
            self._quiet = self._state.quiet

    def feed(self, chunk: bytes) -> None:
        """Called for every chunk, after it was forwarded: keep it cheap."""
        self.bytes_seen += len(chunk)
        if self.broken:
            return
        if self._quiet is not None:
            # Screened in batches: one literal search over many chunks, not one per chunk.
            self._held.append(chunk)
            self._held_bytes += len(chunk)
            if self._held_bytes >= HOLD_BYTES:
                self._release()
            return
        try:
            if self._decoder is not None:
                chunk = self._decoder.decode(chunk)
            self._frames(self._framer.feed(chunk))
        except Exception:
            self._failed()

    def _failed(self) -> None:
        log.exception("metering failed; the call goes on unmetered")
        self.errors += 1
        self.broken = True

    def _release(self) -> None:
        """Read the held chunks. Runs of whole frames that cannot matter (once the state is
        `ready()`) are kept unread for a possible estimate instead of being framed and
        parsed; only the frames that may matter go through the framer."""
        held, self._held, self._held_bytes = self._held, [], 0
        if not held or self.broken:
            return
        try:
            buf = held[0] if len(held) == 1 else b"".join(held)
            framer, state, end = self._framer, self._state, self._end
            scan = self._quiet.over(buf)
            pos, size = 0, len(buf)
            while pos < size:
                if framer.idle and state.ready():
                    first = scan.next(pos)
                    if first < 0 and buf.endswith(end):
                        state.acc.text.add_chunk(buf[pos:] if pos else buf, self._read_later)
                        return
                    cut = buf.rfind(end, pos, first if first >= 0 else size)
                    if cut >= 0:
                        state.acc.text.add_chunk(buf[pos:cut + len(end)], self._read_later)
                        pos = cut + len(end)
                    if first < 0:
                        first = pos
                else:
                    first = pos
                # Frame what may matter, up to the end of its frame (or of the buffer).
                stop = buf.find(end, first)
                stop = size if stop < 0 else stop + len(end)
                self._frames(framer.feed(buf[pos:stop] if pos or stop < size else buf))
                pos = stop
        except Exception:
            self._failed()

    def _frames(self, frames: list[Any]) -> None:
        if not frames or self._state is None:
            return
        on_frame = self._state.on_frame
        if self._sse:
            for ev in frames:
                on_frame(ev.name, ev.data)
        else:
            for data in frames:
                on_frame(None, data)

    def _read_later(self, chunk: bytes, out: Any) -> None:
        framer: Any = SseFramer() if self._sse else NdjsonFramer()
        text_of = self._state.frame_text
        for frame in framer.feed(chunk) + framer.flush():
            if self._sse:
                text_of(frame.name, frame.data, out)
            else:
                text_of(None, frame, out)

    def progress(self) -> Observation | None:
        """A look at the running state (live feed), without ending it."""
        self._release()
        if self._state is None or self.broken:
            return None
        try:
            result: Observation = self._state.result()
            return result
        except Exception:
            return None

    def finish(self) -> Observation:
        dialect = self._dialect
        if dialect is None:
            return Observation(parse_errors=self.errors)
        self._release()
        try:
            if not self.broken:
                if self._decoder is not None:
                    self._frames(self._framer.feed(self._decoder.flush()))
                if self._state is not None:
                    self._frames(self._framer.flush())
                    obs: Observation = self._state.result()
                else:
                    bodies = self._framer.flush()
                    obs = dialect.from_json(loads(bodies[0])) if bodies else Observation()
                if self.errors:
                    from dataclasses import replace

                    obs = replace(obs, parse_errors=obs.parse_errors + self.errors)
                return obs
        except Exception:
            log.warning("unreadable response body (%d bytes); usage not reported",
                        self.bytes_seen)
            self.errors += 1
        if self._state is not None:
            try:
                from dataclasses import replace

                partial: Observation = self._state.result()
                return replace(partial, parse_errors=partial.parse_errors + self.errors)
            except Exception:
                pass
        return Observation(parse_errors=self.errors)
