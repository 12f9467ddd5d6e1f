"""Prometheus metrics on the app's own CollectorRegistry.

Every counter moves from the same CallRecord the ledger stores, so the two agree. Each
label keeps at most `max_label_values` distinct values; later ones become `other`. Only a
call the upstream accepted may bring a new value (a model, agent or tag), and `upstream`
takes only configured names: junk from callers that were refused cannot fill the cap and
push real values out. A model name the price list (or `pricing.models`) knows always keeps
its own value and takes no room in the cap: an upstream that accepts any model name
(llama.cpp) cannot push `gpt-4o` out with junk.
Each family also keeps at most `max_series` label sets.
`session` and `run` are never labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from proxy import __version__
from proxy.record import CallRecord, LiveCall
from proxy.sinks.labels import LabelCap, admits
from proxy.sinks.tally import CounterTally, HistogramTally, LiveGauge, Tallies

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60)
# the `code` label of the usual status codes, made once (others: str() per call)
_STATUS: dict[int | None, str] = {None: "none", **{c: str(c) for c in range(100, 600)}}


class Metrics:
    name = "metrics"

    def __init__(self, registry: CollectorRegistry, *, max_label_values: int = 100,
                 tag_labels: Sequence[str] = (), prices_version: str = "",
                 upstreams: Sequence[str] | None = None, max_series: int = 10_000,
                 known_models: Callable[[], AbstractSet[str]] | None = None) -> None:
        self.registry = registry
        self.cap = LabelCap(max_label_values)
        # model names the price list knows: their own label value, outside the cap. The
        # book builds the set once; it is asked at the first record that needs it, then kept.
        self._known_models = known_models
        self._known: AbstractSet[str] | None = None if known_models is not None else frozenset()
        # configured upstream names are the only `upstream` values (None: any, capped)
        self._upstreams = None if upstreams is None else frozenset(upstreams)
        self.tag_labels = tuple(tag_labels)
        # The values each label already keeps (the cap's live sets): a record whose values
        # are all there takes them as they are, without the cap's calls (see observe).
        self._kept_up = self.cap.kept("upstream")
        self._kept_op = self.cap.kept("operation")
        self._kept_model = self.cap.kept("model")
        self._kept_agent = self.cap.kept("agent")
        self._kept_tags = tuple((t, self.cap.kept(f"tag:{t}")) for t in self.tag_labels)
        # raw `upstream` values that are their own label for good: configured (or any, when
        # none are) and kept by the cap. At most max_label_values of them.
        self._own_up: set[str] = set()
        t = self.tag_labels
        r = registry
        # The families every call moves are plain-dict tallies (see proxy/sinks/tally.py).
        tallies = Tallies(max_series)
        self.requests = tallies.add(CounterTally(
            "tokenbooth_requests", "Proxied calls.",
            ("upstream", "operation", "model", "agent", "outcome", "code", *t)))
        self.input_tokens = tallies.add(CounterTally(
            "tokenbooth_input_tokens", "Input tokens by cache class.",
            ("upstream", "model", "agent", "cache", "source", *t)))
        self.output_tokens = tallies.add(CounterTally(
            "tokenbooth_output_tokens", "Output tokens by phase.",
            ("upstream", "model", "agent", "phase", "source", *t)))
        self.cost = tallies.add(CounterTally(
            "tokenbooth_cost_usd", "Spend in USD (priced calls only).",
            ("upstream", "model", "agent", *t)))
        self.list_cost = tallies.add(CounterTally(
            "tokenbooth_list_cost_usd",
            "Spend in USD at list prices, before pricing.adjustments (priced calls only).",
            ("upstream", "model", "agent", *t)))
        self.unpriced = tallies.add(CounterTally(
            "tokenbooth_unpriced_requests",
            "Calls with no known price that succeeded or carried usage.",
            ("upstream", "model")))
        self.estimated = tallies.add(CounterTally(
            "tokenbooth_estimated_requests", "Calls whose usage was estimated in whole or part.",
            ("upstream", "source")))
        self.duration = tallies.add(HistogramTally(
            "tokenbooth_request_duration_seconds", "Call duration.",
            ("upstream", "operation", "model", "stream"), _LATENCY_BUCKETS))
        self.ttft = tallies.add(HistogramTally(
            "tokenbooth_time_to_first_token_seconds", "Time to the first body byte of a stream.",
            ("upstream", "operation", "model"), _TTFT_BUCKETS))
        self.inflight = tallies.add(LiveGauge(
            "tokenbooth_inflight_requests", "Calls in flight.", "upstream"))
        # the calls in flight (call id -> `upstream` label), counted at scrape
        self._live = self.inflight.live
        r.register(tallies)
        self.ledger_rows = Counter("tokenbooth_ledger_rows", "Ledger rows by result.",
                                   ("result",), registry=r)
        for result in ("written", "spooled", "dropped"):
            self.ledger_rows.labels(result)
        self.ledger_queue = Gauge("tokenbooth_ledger_queue_rows", "Rows waiting for the ledger.",
                                  registry=r)
        self.sink_errors = Counter("tokenbooth_sink_errors", "Sink failures.", ("sink",),
                                   registry=r)
        self.exported = Counter("tokenbooth_export_records",
                                "Call records handed to export sinks, by result.",
                                ("sink", "result"), registry=r)
        self.clients_refused = Counter(
            "tokenbooth_client_connections_refused",
            "Client connections closed by the server's guards.", ("reason",), registry=r)
        for reason in ("header_timeout", "max_client_connections", "max_connections_per_client"):
            self.clients_refused.labels(reason)
        self.tag_cleaned = Counter("tokenbooth_tag_values_cleaned",
                                   "X-Meter-* values truncated or cleaned.", registry=r)
        self.attribution_unreadable = Counter(  # issue 21
            "tokenbooth_attribution_unreadable",
            "Other tools' attribution values that could not be read (skipped).", registry=r)
        self.parse_errors = Counter("tokenbooth_parse_errors",
                                    "Response events the meter could not read.", ("upstream",),
                                    registry=r)
        self.records_dropped = Counter(
            "tokenbooth_records_dropped",
            "Calls not recorded: the recorder's queue was full.", registry=r)
        build = Gauge("tokenbooth_build_info", "Build information.", ("version", "prices"),
                      registry=r)
        build.labels(__version__, prices_version).set(1)
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def started(self, call: LiveCall) -> None:
        up = call.upstream
        if up not in self._kept_up:  # a kept value is its own label: no need to ask the cap
            up = self.cap("upstream", up)
        self._live[call.call_id] = up
        self.inflight.series(up)

    def _labels(self, rec: CallRecord) -> tuple[str, str, str, str, tuple[str, ...]]:
        """The record's upstream, operation, model, agent and tag labels, as the cap gives
        them: only a call the upstream took may bring a new model, agent or tag value."""
        cap = self.cap
        raw = rec.upstream
        up = cap("upstream", raw if self._upstreams is None or raw in self._upstreams
                 else "other")
        if up == raw and up in self._kept_up:
            self._own_up.add(up)
        admit = admits(rec)
        op = cap("operation", rec.operation)
        known = self._known
        if known is None:
            known = self._known = self._known_models() if self._known_models is not None \
                else frozenset()
        model = cap("model", rec.model or rec.request_model or "unknown", admit, known)
        agent = cap("agent", rec.agent, admit)
        tags = tuple(cap(f"tag:{t}", rec.tags.get(t), admit) for t in self.tag_labels)
        return up, op, model, agent, tags

    def _kept_tag_values(self, rec: CallRecord) -> tuple[str, ...] | None:
        """The record's tag labels when every value is already kept, else None."""
        got = rec.tags
        values: tuple[str, ...] = ()
        for t, kept in self._kept_tags:
            v = got.get(t) or "none"
            if v not in kept:
                return None
            values += (v,)  # one or two tag labels: no list, no tuple() call
        return values

    def observe(self, rec: CallRecord) -> None:
        self._live.pop(rec.call_id, None)  # no longer in flight
        # Fast path: a value the cap already keeps (or a model the price list knows) is its
        # own label for good (the cap's sets only grow), so when every value of the record is
        # one, the cap would answer each as it is: take them without asking it.
        up, op, agent = rec.upstream, rec.operation, rec.agent or "none"
        model = rec.model or rec.request_model or "unknown"
        known = self._known
        tags: tuple[str, ...] | None = () if not self._kept_tags \
            else self._kept_tag_values(rec)
        if not (tags is not None and up in self._own_up and op in self._kept_op
                and agent in self._kept_agent
                and ((known is not None and model in known) or model in self._kept_model)):
            up, op, model, agent, tags = self._labels(rec)
        code = _STATUS.get(rec.status_code) or str(rec.status_code)
        self.requests.inc((up, op, model, agent, rec.outcome, code) + tags)
        n = rec.input_tokens
        if n is not None and rec.input_source != "none":
            read, write = rec.cache_read_tokens or 0, rec.cache_write_tokens or 0
            src = rec.input_source
            inc = self.input_tokens.inc
            # the cache classes in this order (a series' first call orders /metrics)
            uncached = n - read - write
            if uncached:
                inc((up, model, agent, "none", src) + tags, uncached)
            if read:
                inc((up, model, agent, "read", src) + tags, read)
            if write:
                inc((up, model, agent, "write", src) + tags, write)
        n = rec.output_tokens
        if n is not None and rec.output_source != "none":
            reasoning = rec.reasoning_tokens or 0
            src = rec.output_source
            inc = self.output_tokens.inc
            response = n - reasoning
            if response:
                inc((up, model, agent, "response", src) + tags, response)
            if reasoning:
                inc((up, model, agent, "reasoning", src) + tags, reasoning)
        cost = rec.cost_usd
        if cost is not None:
            key = (up, model, agent) + tags
            if cost:
                usd = float(cost)
                self.cost.inc(key, usd)
            list_cost = rec.list_cost_usd
            if list_cost:  # most often the very Decimal of cost_usd (no adjustment)
                self.list_cost.inc(key, usd if list_cost is cost else float(list_cost))
        elif rec.unpriced:
            self.unpriced.inc((up, model))
        if rec.usage_source in ("estimated", "partial"):
            self.estimated.inc((up, rec.usage_source))
        self.duration.observe((up, op, model, "true" if rec.stream else "false"),
                              rec.duration_ms / 1000)
        if rec.ttft_ms is not None:
            self.ttft.observe((up, op, model), rec.ttft_ms / 1000)
        if rec.tags_cleaned:
            self.tag_cleaned.inc(rec.tags_cleaned)
        if rec.attribution_unreadable:
            self.attribution_unreadable.inc(rec.attribution_unreadable)
        if rec.parse_errors:
            self._child(self.parse_errors, (up,)).inc(rec.parse_errors)

    def ledger_rows_changed(self, result: str, n: int) -> None:
        self._child(self.ledger_rows, (result,)).inc(n)

    def export_result(self, sink: str, result: str, n: int) -> None:
        self._child(self.exported, (sink, result)).inc(n)

    def client_refused(self, reason: str) -> None:
        self._child(self.clients_refused, (reason,)).inc()

    def record_dropped(self) -> None:
        self.records_dropped.inc()

    def sink_failed(self, sink: str) -> None:
        self._child(self.sink_errors, (sink,)).inc()

    async def aclose(self) -> None:
        return None
