"""The attribute sets the OTel sink's instruments record under, bounded.

At most `max_series` attribute sets per instrument; past that, a record goes to the `other`
set (every value `other`, as the Prometheus sink does) and is counted. `SeriesCap` picks the
set a histogram records under; `Tally` keeps the counters' cumulative sums by set, which the
SDK's observable counters read in its export thread.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

__all__ = ["Key", "SeriesCap", "Tally"]


Key = tuple[tuple[str, Any], ...]


def _other(key: Key) -> Key:
    """Where an attribute set goes once its instrument holds `max_series` of them (as the
    Prometheus sink does: every value `other`)."""
    return tuple((k, "other") for k, _ in key)


class SeriesCap:
    """At most `max_series` attribute sets per instrument, the last one the `other` set;
    each record that lands there is counted (`tokenbooth_otel_series_overflow_total`)."""

    def __init__(self, max_series: int, overflow: Any) -> None:
        self.limit = max(max_series - 1, 0)
        self.overflow = overflow  # the Prometheus counter's child for this instrument
        self.seen: dict[Key, dict[str, Any]] = {}  # each set's attributes, built once

    def __call__(self, key: Key) -> dict[str, Any]:
        """The attributes to record under: the set's own, or the `other` set's."""
        seen = self.seen
        attrs = seen.get(key)
        if attrs is not None:
            return attrs
        if len(seen) < self.limit:
            attrs = seen[key] = dict(key)
            return attrs
        self.overflow.inc()
        return dict(_other(key))


class Tally:
    """Cumulative sums by attribute set (a tuple of pairs), read by an observable counter's
    callback in the SDK's export thread (from a copy: the loop goes on adding); at most
    `max_series` sets (the last one `other`, each record landing there counted)."""

    def __init__(self, max_series: int, overflow: Any) -> None:
        self.sums: dict[Key, float] = {}
        self._attrs: dict[Key, dict[str, Any]] = {}
        self.limit = max(max_series - 1, 0)
        self.overflow = overflow

    def add(self, key: Key, n: float) -> None:
        sums = self.sums
        cur = sums.get(key)
        if cur is None:
            if len(sums) >= self.limit:
                key = _other(key)
                self.overflow.inc()
            cur = sums.get(key, 0)
        sums[key] = cur + n

    def observe(self, _options: CallbackOptions) -> list[Observation]:
        out = []
        for key, value in self.sums.copy().items():
            attrs = self._attrs.get(key)
            if attrs is None:
                attrs = self._attrs[key] = dict(key)
            out.append(Observation(value, attrs))
        return out
