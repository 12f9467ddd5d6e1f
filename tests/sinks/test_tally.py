"""The plain-dict tallies expose exactly what prometheus-client's own metrics would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from proxy.sinks.tally import CounterTally, GaugeTally, HistogramTally, LiveGauge, Tallies

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
VALUES = [0.0, 0.05, 0.07, 0.1, 0.2500001, 1, 3.3, 10, 11, 600]


def exposition(registry: CollectorRegistry) -> list[str]:
    return sorted(line for line in generate_latest(registry).decode().splitlines()
                  if line and "_created" not in line)


def test_same_exposition_as_prometheus_client() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    c = Counter("t_calls", "Calls.", ("a", "b"), registry=theirs)
    g = Gauge("t_inflight", "In flight.", ("a",), registry=theirs)
    h = Histogram("t_seconds", "Duration.", ("a",), buckets=BUCKETS, registry=theirs)
    tallies = Tallies()
    tc = tallies.add(CounterTally("t_calls", "Calls.", ("a", "b")))
    tg = tallies.add(GaugeTally("t_inflight", "In flight.", ("a",)))
    th = tallies.add(HistogramTally("t_seconds", "Duration.", ("a",), BUCKETS))
    ours.register(tallies)
    for i, v in enumerate(VALUES):
        key = ("x" if i % 2 else "y", "z")
        c.labels(*key).inc(v)
        tc.inc(key, v)
        h.labels(key[0]).observe(v)
        th.observe(key[:1], v)
        g.labels(key[0]).inc()
        tg.add(key[:1], 1)
    g.labels("x").dec()
    tg.add(("x",), -1)
    assert exposition(ours) == exposition(theirs)


def test_counters_only_go_up() -> None:
    with pytest.raises(ValueError):
        CounterTally("t", "T.", ("a",)).inc(("x",), -1)


def test_the_live_gauge_counts_calls_in_flight_as_a_gauge_would() -> None:
    """Counted from the calls in flight at scrape: the same lines as a Gauge moved up at
    each start and down at each end, series in first-start order, 0 once all ended."""
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    g = Gauge("t_inflight", "In flight.", ("a",), registry=theirs)
    tallies = Tallies()
    live = tallies.add(LiveGauge("t_inflight", "In flight.", "a"))
    ours.register(tallies)
    for i, a in enumerate(("y", "x", "y", "z")):
        g.labels(a).inc()
        live.live[f"c{i}"] = a
        live.series(a)
    for i, a in ((0, "y"), (3, "z")):  # c0 and c3 end
        g.labels(a).dec()
        del live.live[f"c{i}"]
    assert generate_latest(ours) == generate_latest(theirs)
    assert [s.labels["a"] for s in next(iter(ours.collect())).samples] == ["y", "x", "z"]
