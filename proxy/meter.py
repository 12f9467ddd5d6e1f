"""Meter: the side copy of one response. content decoder -> framer -> dialect state.

Sans-IO and exception-proof: `feed()` never raises (a failure is counted and metering of
that call stops), so observing can never break forwarding. Runs of whole frames that
cannot matter are not read at all: they are kept as data (`Skipped`) in the stream's text
buffer, read by a pure function only if an estimate needs their text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from proxy.dialects import Dialect, Observation, StreamState
from proxy.dialects.base import Screen, Skipped
from proxy.framing import (
    ContentDecoder,
    EventStreamFramer,
    Framer,
    JsonArrayFramer,
    JsonBodyBuffer,
    NamedFrame,
    NdjsonFramer,
    SseFramer,
    StreamFramer,
    make_decoder,
)

__all__ = ["Meter"]

log = logging.getLogger("tokenbooth.meter")


HOLD_BYTES = 64 * 1024  # whole chunks screened together, at the latest every this many bytes


class _Events:
    """Named frames (SSE, AWS event-stream) into a stream state."""

    __slots__ = ("framer", "state")

    def __init__(self, framer: Framer[NamedFrame], state: StreamState) -> None:
        self.framer, self.state = framer, state

    def feed(self, chunk: bytes) -> None:
        frames = self.framer.feed(chunk)
        if frames:
            on_frame = self.state.on_frame
            for ev in frames:
                on_frame(ev.name, ev.data)

    def flush(self) -> None:
        on_frame = self.state.on_frame
        for ev in self.framer.flush():
            on_frame(ev.name, ev.data)


class _Lines:
    """JSON texts (NDJSON lines, streamed array elements) into a stream state."""

    __slots__ = ("framer", "state")

    def __init__(self, framer: Framer[bytes], state: StreamState) -> None:
        self.framer, self.state = framer, state

    def feed(self, chunk: bytes) -> None:
        frames = self.framer.feed(chunk)
        if frames:
            on_frame = self.state.on_frame
            for data in frames:
                on_frame(None, data)

    def flush(self) -> None:
        on_frame = self.state.on_frame
        for data in self.framer.flush():
            on_frame(None, data)


class Meter:
    __slots__ = ("_dialect", "_content_type", "_decoder", "_pipe", "_body", "_state",
                 "_screened", "errors", "broken", "_seen", "streaming", "_quiet", "_end",
                 "_held", "_held_bytes")

    def __init__(self, dialect: Dialect | None, content_type: str | None,
                 content_encoding: str | None, path_stream: bool = False) -> None:
        self._dialect = dialect
        self._content_type = content_type
        self.errors = 0
        self.broken = dialect is None
        self._seen = 0  # bytes fed, but not those held (see bytes_seen)
        self._state: StreamState | None = None
        self._pipe: _Events | _Lines | None = None  # a stream: frames into the state
        self._body: JsonBodyBuffer | None = None  # a whole JSON body
        self._decoder: ContentDecoder | None = None
        self._quiet: Screen | None = None  # set: chunks are screened before framing
        self._screened: StreamFramer[object] | None = None  # the framer screening passes
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
        if not (lines or eventstream or "event-stream" in ct or "ndjson" in ct or path_stream):
            self._body = JsonBodyBuffer()
            return
        state = self._state = dialect.new_stream()
        screened: StreamFramer[object] | None = None
        if lines or ("ndjson" in ct and not eventstream and "event-stream" not in ct):
            ndjson = NdjsonFramer()
            self._pipe, screened, self._end = _Lines(ndjson, state), ndjson, b"\n"
        elif eventstream:
            self._pipe = _Events(EventStreamFramer(), state)
        elif "event-stream" in ct:
            sse = SseFramer()
            self._pipe, screened = _Events(sse, state), sse
        else:  # the URL asks for a stream: a streamed JSON array
            self._pipe = _Lines(JsonArrayFramer(), state)
        if self._decoder is None and not path_stream and screened is not None \
                and state.quiet is not None:
            self._quiet, self._screened = state.quiet, screened

    @property
    def bytes_seen(self) -> int:
        return self._seen + self._held_bytes

    def feeder(self) -> Callable[[bytes], None]:
        """What to call with each chunk: `feed`, or for a screened stream `_hold` directly
        (the relay calls it for every chunk: the fewer steps the better)."""
        return self._hold if self._quiet is not None and not self.broken else self.feed

    def _hold(self, chunk: bytes) -> None:
        # Screened in batches: one literal search over many chunks, not one per chunk.
        self._held.append(chunk)
        self._held_bytes += len(chunk)
        if self._held_bytes >= HOLD_BYTES:
            self._release()

    def feed(self, chunk: bytes) -> None:
        """Called for every chunk, after it was forwarded: keep it cheap."""
        if self._quiet is not None:
            self._hold(chunk)
            return
        self._seen += len(chunk)
        if self.broken:
            return
        try:
            if self._decoder is not None:
                chunk = self._decoder.decode(chunk)
            if self._pipe is not None:
                self._pipe.feed(chunk)
            elif self._body is not None:
                self._body.feed(chunk)
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
        held, self._held = self._held, []
        self._seen += self._held_bytes
        self._held_bytes = 0
        quiet, framer, pipe, state = self._quiet, self._screened, self._pipe, self._state
        if not held or self.broken or quiet is None or framer is None or pipe is None \
                or state is None:
            return
        try:
            buf = held[0] if len(held) == 1 else b"".join(held)
            end = self._end
            sse = isinstance(pipe, _Events)
            text = state.acc.text
            scan = quiet.over(buf)
            pos, size = 0, len(buf)
            while pos < size:
                if framer.idle and state.ready():
                    first = scan.next(pos)
                    if first < 0 and buf.endswith(end):
                        text.add_skipped(Skipped(buf[pos:] if pos else buf, sse,
                                                 state.frame_text))
                        return
                    cut = buf.rfind(end, pos, first if first >= 0 else size)
                    if cut >= 0:
                        text.add_skipped(Skipped(buf[pos:cut + len(end)], sse,
                                                 state.frame_text))
                        pos = cut + len(end)
                    if first < 0:
                        first = pos
                else:
                    first = pos
                # Frame what may matter, up to the end of its frame (or of the buffer).
                stop = buf.find(end, first)
                stop = size if stop < 0 else stop + len(end)
                pipe.feed(buf[pos:stop] if pos or stop < size else buf)
                pos = stop
        except Exception:
            self._failed()

    def progress(self) -> Observation | None:
        """A look at the running state (live feed), without ending it."""
        self._release()
        if self._state is None or self.broken:
            return None
        try:
            return self._state.result()
        except Exception:
            return None

    def finish(self) -> Observation:
        dialect = self._dialect
        if dialect is None:
            return Observation(parse_errors=self.errors)
        self._release()
        try:
            if not self.broken:
                pipe, body = self._pipe, self._body
                if self._decoder is not None:
                    tail = self._decoder.flush()
                    if pipe is not None:
                        pipe.feed(tail)
                    elif body is not None:
                        body.feed(tail)
                if pipe is not None:
                    pipe.flush()
                    obs = pipe.state.result()
                else:
                    bodies = body.flush() if body is not None else []
                    obs = dialect.from_body(bodies[0], self._content_type) if bodies \
                        else Observation()
                if self.errors:
                    obs = replace(obs, parse_errors=obs.parse_errors + self.errors)
                return obs
        except Exception:
            log.warning("unreadable response body (%d bytes); usage not reported",
                        self.bytes_seen)
            self.errors += 1
        if self._state is not None:
            try:
                partial = self._state.result()
                return replace(partial, parse_errors=partial.parse_errors + self.errors)
            except Exception:
                pass
        return Observation(parse_errors=self.errors)
