"""W3C Trace Context (`traceparent`) for the proxy's span of each call, without OpenTelemetry.

With OTel spans on, each call's span ids are chosen when the call starts: the trace of the
incoming `traceparent` (else a new one) and a new span id. The upstream request then carries
a `traceparent` naming that span, and the span the OTel sink emits from the finished record
has exactly these ids (a child of the client's span). Pure: no I/O, no OTel import; with
spans off nothing here runs and `traceparent` passes through untouched.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence

from proxy.value import value

__all__ = ["SpanIds", "parse_tracestate", "start_span_ids"]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# W3C tracestate list-member (the SDK's TraceState rules, so a kept value never makes it warn)
_MEMBER = re.compile(r"([a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]"
                     r"{0,13})=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_CHARS = 8192  # the SDK's propagator refuses a longer header
_rand = random.Random()  # ids need uniqueness, not secrecy (the SDK's own generator does so)
os.register_at_fork(after_in_child=_rand.seed)  # a forked child draws its own ids


@value
class SpanIds:
    """A call's span: its trace, its own id, its parent (the client's span, when it sent
    one), the trace flags (bit 0: sampled) and the incoming `tracestate`, passed on."""

    trace_id: int
    span_id: int
    parent_id: int | None = None
    flags: int = 1
    tracestate: str | None = None

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    def traceparent(self) -> str:
        """The header the upstream gets: this span as its parent."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}"

    def child(self) -> SpanIds:
        """A span under this one (each line of a batch download, under the download's)."""
        return SpanIds(self.trace_id, _span_id(), self.span_id, self.flags, self.tracestate)

    def sibling(self) -> SpanIds:
        """Another span with the same parent (each response of a socket, the usage row of
        a background response: one span per record)."""
        return SpanIds(self.trace_id, _span_id(), self.parent_id, self.flags, self.tracestate)


def _nonzero(bits: int) -> int:
    """A random id of `bits` bits (W3C: all zeros is invalid)."""
    while True:
        v = _rand.getrandbits(bits)
        if v:
            return v


def _span_id() -> int:
    return _nonzero(64)


def parse_traceparent(value: str | None) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a valid version-00-compatible header, else None
    (a malformed or all-zero header starts a new trace, as W3C says)."""
    if not value:
        return None
    value = value.strip()
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version, trace, span, flags = m.groups()
    if version == "ff" or (version == "00" and len(value) != 55):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(flags, 16)


def parse_tracestate(lines: Sequence[str]) -> str | None:
    """The incoming `tracestate` header lines as one valid header value, or None: lines
    are joined with `,` (W3C: several lines are one list); empty members are dropped; a
    malformed member, a duplicate key, more than 32 members or more than 8192 characters
    makes the whole header invalid, and it is dropped silently (W3C: the vendor MAY discard
    it; an invalid one handed to the SDK would log a warning for every span)."""
    joined = ",".join(lines)
    if not joined or len(joined) > MAX_TRACESTATE_CHARS:
        return None
    members: list[str] = []
    keys: set[str] = set()
    for raw in joined.split(","):
        member = raw.strip(" \t")
        if not member:
            continue
        m = _MEMBER.fullmatch(member)
        if m is None or m.group(1) in keys:
            return None
        keys.add(m.group(1))
        members.append(member)
    if not members or len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    return ",".join(members)


def start_span_ids(traceparent: str | None, tracestate: str | Sequence[str] | None
                   ) -> SpanIds:
    """The span ids of a call starting now: a child of the incoming context (with its
    `tracestate`, when valid), or a new sampled trace (W3C: a new trace carries none of
    the client's `tracestate`)."""
    parent = parse_traceparent(traceparent)
    if parent is None:
        return SpanIds(_nonzero(128), _span_id())
    trace_id, parent_id, flags = parent
    state = parse_tracestate((tracestate,) if isinstance(tracestate, str)
                             else tracestate or ())
    return SpanIds(trace_id, _span_id(), parent_id, flags & 1, state)
