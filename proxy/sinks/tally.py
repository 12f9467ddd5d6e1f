"""Per-call metric families kept as plain dicts, exposed through prometheus-client at scrape.

prometheus-client's Counter/Histogram children take a lock and check their type on every
`inc()`; a call moves about ten of them. Here a call does a few dict updates on the event
loop's thread (the only writer, so no lock), and `collect()` hands the families to
prometheus-client's exposition when /metrics is scraped. Names, labels, `_total`, `_bucket`
`le` strings, `_sum` and `_count` come out exactly as prometheus-client's own metrics would
(without the optional `_created` samples).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TypeVar

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CounterTally", "GaugeTally", "HistogramTally", "LiveGauge", "Tallies"]

Key = tuple[str, ...]
T = TypeVar("T", bound="CounterTally | HistogramTally")


def _overflow(key: Key) -> Key:
    """Where a label set goes once its family holds `max_series` of them."""
    return ("other",) * len(key)


class CounterTally:
    __slots__ = ("name", "doc", "labels", "values", "max_series")
    _family: type[CounterMetricFamily] | type[GaugeMetricFamily] = CounterMetricFamily

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.values: dict[Key, float] = {}
        self.max_series = 1 << 62

    def inc(self, key: Key, n: float = 1.0) -> None:
        if n < 0:
            raise ValueError("counters only go up")
        values = self.values
        cur = values.get(key)
        if cur is None:
            if len(values) >= self.max_series:
                key = _overflow(key)
            cur = values.get(key, 0.0)
        values[key] = cur + n

    def family(self) -> Metric:
        fam = self._family(self.name, self.doc, labels=self.labels)
        for key, value in self.values.items():
            fam.add_metric(list(key), value)
        return fam


class GaugeTally(CounterTally):
    __slots__ = ()
    _family = GaugeMetricFamily

    def add(self, key: Key, n: float) -> None:
        values = self.values
        values[key] = values.get(key, 0.0) + n


class LiveGauge(GaugeTally):
    """How many calls in flight carry each label value, counted when scraped: a call moves
    it by one dict set when it starts and one pop when it ends (`live`: call id -> value),
    not by two float updates on label tuples. A series appears when its first call starts
    (`values` keeps that order, its numbers unused) and stays, at 0, when none is left."""

    __slots__ = ("live",)

    def __init__(self, name: str, doc: str, label: str) -> None:
        super().__init__(name, doc, (label,))
        self.live: dict[str, str] = {}

    def series(self, value: str) -> None:
        """`value`'s series, from its first call on."""
        self.values.setdefault((value,), 0.0)

    def family(self) -> Metric:
        counts = dict.fromkeys(self.values, 0.0)
        for value in self.live.values():
            counts[(value,)] += 1
        fam = self._family(self.name, self.doc, labels=self.labels)
        for key, n in counts.items():
            fam.add_metric(list(key), n)
        return fam


class HistogramTally:
    __slots__ = ("name", "doc", "labels", "bounds", "_le", "series", "max_series")

    def __init__(self, name: str, doc: str, labels: Sequence[str],
                 buckets: Sequence[float]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        # per series: the count in each bucket (not cumulative; last is beyond every bound),
        # then the sum of the observed values
        self.series: dict[Key, list[float]] = {}
        self.max_series = 1 << 62

    def observe(self, key: Key, value: float) -> None:
        s = self.series.get(key)
        if s is None:
            if len(self.series) >= self.max_series:
                key = _overflow(key)
                s = self.series.get(key)
            if s is None:
                s = self.series[key] = [0.0] * (len(self.bounds) + 2)
        s[bisect_left(self.bounds, value)] += 1  # bucket `le` holds value <= le
        s[-1] += value

    def family(self) -> Metric:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, s in self.series.items():
            running, buckets = 0.0, []
            for le, n in zip(self._le, s[:-1], strict=True):
                running += n
                buckets.append((le, running))
            fam.add_metric(list(key), buckets, sum_value=s[-1])
        return fam


class Tallies(Collector):
    """Registered once on the app's registry; yields every tally's family at scrape."""

    def __init__(self, max_series: int = 1 << 62) -> None:
        self._tallies: list[CounterTally | HistogramTally] = []
        self._max_series = max_series  # label sets per family, the last one all `other`

    def add(self, tally: T) -> T:
        tally.max_series = self._max_series - 1
        self._tallies.append(tally)
        return tally

    def collect(self) -> Iterator[Metric]:
        for tally in self._tallies:
            yield tally.family()
