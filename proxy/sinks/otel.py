"""OTLP export of each call record: GenAI metrics and one span per call, with the SDK.

Imported only when `otel:` is configured (the OpenTelemetry SDK is not loaded otherwise).
Every OTel name comes from `proxy.sinks.otel_names`; the exporters and their loss counts
from `proxy.sinks.otel_export`; the instruments' bounded attribute sets from
`proxy.sinks.otel_series`.

Metrics: the SDK's MeterProvider with a PeriodicExportingMetricReader (cumulative, every
`export_interval_seconds`); the counters move from the same CallRecord the ledger stores,
so their totals equal the ledger's. The counters are the SDK's observable counters over
plain-dict tallies this sink keeps (a dict update per record instead of an SDK `add` of
~7 µs each); the histograms are the SDK's own. Attributes are bounded like the Prometheus labels
(`metrics.max_label_values` per attribute; tag attributes only for `metrics.tag_labels`).

Spans: one per record, built from it (`ReadableSpan`: name `{operation} {model}`, kind
CLIENT, the record's start and end, the ids chosen when the call started, so the upstream
already named it as its parent) and handed to a BatchSpanProcessor. Exports run in the
SDK's own threads with short timeouts; the event loop only queues. The queue is bounded:
past `queue_spans` spans not yet exported, a new span is dropped and counted
(`tokenbooth_otel_dropped_total{signal="spans"}`), as are the spans of a failed export.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from prometheus_client import CollectorRegistry
from yarl import URL

from proxy import __version__
from proxy.config import OtelConfig, Upstream
from proxy.record import CallRecord
from proxy.sinks import otel_names as N
from proxy.sinks.labels import LabelCap, admits
from proxy.sinks.otel_export import CountingMetricExporter, CountingSpanExporter, Lossy, exporters
from proxy.sinks.otel_series import SeriesCap, Tally
from proxy.tracecontext import SpanIds, start_span_ids

__all__ = ["OtelSink"]

log = logging.getLogger("tokenbooth.otel")
_UNSET = Status(StatusCode.UNSET)


@functools.cache  # unit names: a few dozen, fixed by the dialects
def _unit_part(unit: str) -> tuple[str, str] | None:
    """(token class, modality) of a genai-prices unit name that is a modality's part of a
    token class (`input_audio_tokens`, `cache_video_read_tokens`, ...), else None."""
    m = N.MODALITY_UNIT.fullmatch(unit)
    if m is None:
        return None
    side, modality, cache_modality, cache = m.groups()
    if side is not None:
        return f"{side}_tokens", modality
    return f"cache_{cache}_tokens", cache_modality


def _modality_parts(units: Mapping[str, int] | None) -> dict[str, list[tuple[str, int]]]:
    """The provider's own modality figures of a record, by token class."""
    out: dict[str, list[tuple[str, int]]] = {}
    for unit, n in (units or {}).items():
        part = _unit_part(unit)
        if part is not None and n:
            out.setdefault(part[0], []).append((part[1], n))
    return out


def _by_modality(total: int, parts: list[tuple[str, int]] | None) -> list[tuple[str, int]]:
    """A token class's total by modality: the provider's figures, the rest as `text` when
    the provider broke the class down (its figures name every modality but text, as
    OpenAI's `*_tokens_details` and Gemini's `*TokensDetails` do), else all of it as
    `unknown` (the conventions: no breakdown, no guess). The parts add up to the total."""
    if not parts:
        return [(N.MODALITY_UNKNOWN, total)]
    rest = total - sum(n for _, n in parts)
    if rest < 0:  # figures that do not fit the total: no breakdown to trust
        return [(N.MODALITY_UNKNOWN, total)]
    if rest:
        text = not any(m == N.MODALITY_TEXT for m, _ in parts)
        return [*parts, (N.MODALITY_TEXT if text else N.MODALITY_UNKNOWN, rest)]
    return parts


class OtelSink:
    name = "otel"

    def __init__(self, cfg: OtelConfig, registry: CollectorRegistry, *,
                 upstreams: Mapping[str, Upstream], tag_labels: Sequence[str] = (),
                 max_label_values: int = 100, max_series: int = 10_000,
                 known_models: Callable[[], AbstractSet[str]] | None = None) -> None:
        self.cfg = cfg
        self.lossy = Lossy(registry)
        self.cap = LabelCap(max_label_values)
        self._known_models = known_models
        self.tag_labels = tuple(tag_labels)
        self._tag_attrs = tuple(N.TAG_PREFIX + t for t in self.tag_labels)
        # each upstream's provider name, server address and port, worked out once
        self._upstreams: dict[str, tuple[str, str, int | None]] = {}
        for name, up in upstreams.items():
            url = URL(up.url)
            provider = N.PROVIDERS_BY_UPSTREAM.get(name) or \
                N.PROVIDERS_BY_DIALECT.get(up.dialect) or up.dialect
            self._upstreams[name] = (provider, url.host or name, url.port)
        self.resource = Resource.create({"service.name": cfg.service_name,
                                         "service.version": __version__})
        self.scope = InstrumentationScope(N.SCOPE, __version__)
        self.meters: MeterProvider | None = None
        self.processor: BatchSpanProcessor | None = None
        self.span_exporter: CountingSpanExporter | None = None
        self.emitted = 0  # spans handed to the processor (the event loop's count)
        self.max_series = max_series
        self._inst: dict[str, Any] = {}
        self._tally: dict[str, Tally] = {}
        self._caps: dict[str, SeriesCap] = {}  # the histograms' attribute sets
        self._system = cfg.semconv in ("legacy", "both")  # gen_ai.system on legacy ones

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        """The SDK's providers and their export threads (from the app's start-up)."""
        cfg = self.cfg
        spans, metrics = exporters(cfg)
        if cfg.metrics:
            reader = PeriodicExportingMetricReader(
                CountingMetricExporter(metrics(), self.lossy),
                export_interval_millis=cfg.export_interval_seconds * 1000,
                export_timeout_millis=cfg.timeout_seconds * 1000)
            self.meters = MeterProvider(resource=self.resource, metric_readers=[reader])
            meter = self.meters.get_meter(N.SCOPE, __version__)
            wanted = {"ours", "both", cfg.semconv} | (
                {"latest", "legacy"} if cfg.semconv == "both" else set())
            for inst in N.INSTRUMENTS:
                if inst.semconv not in wanted:
                    continue
                overflow = self.lossy.overflow.labels(inst.name)
                if inst.kind == "counter":
                    tally = self._tally[inst.key] = Tally(self.max_series, overflow)
                    self._inst[inst.key] = meter.create_observable_counter(
                        inst.name, callbacks=[tally.observe], unit=inst.unit,
                        description=inst.description)
                else:
                    self._caps[inst.key] = SeriesCap(self.max_series, overflow)
                    self._inst[inst.key] = meter.create_histogram(
                        inst.name, unit=inst.unit, description=inst.description,
                        explicit_bucket_boundaries_advisory=list(inst.buckets))
        if cfg.spans:
            self.span_exporter = CountingSpanExporter(spans(), self.lossy, cfg.timeout_seconds)
            self.processor = BatchSpanProcessor(
                self.span_exporter, max_queue_size=cfg.queue_spans,
                schedule_delay_millis=min(cfg.export_interval_seconds * 1000, 5000),
                max_export_batch_size=min(512, cfg.queue_spans),
                export_timeout_millis=cfg.timeout_seconds * 1000)

    async def aclose(self) -> None:
        """Export what is left, within one `timeout_seconds` per signal (in a thread)."""
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        timeout = self.cfg.timeout_seconds
        if self.processor is not None and self.span_exporter is not None:
            self.span_exporter.deadline = time.monotonic() + timeout
            try:
                self.processor.shutdown()
            except Exception:
                log.exception("OTLP span export shutdown failed")
        if self.meters is not None:
            try:
                self.meters.shutdown(timeout_millis=timeout * 1000)
            except Exception:
                log.exception("OTLP metric export shutdown failed")

    # -- records -----------------------------------------------------------------------

    def observe(self, rec: CallRecord) -> None:
        attrs = self._attributes(rec)
        if self._inst:
            self._metrics(rec, attrs)
        if self.processor is not None:
            self._span(rec, attrs)

    def _attributes(self, rec: CallRecord) -> dict[str, Any]:
        """The attributes metrics and span share: bounded values (capped like the
        Prometheus labels)."""
        cap = self.cap
        admit = admits(rec)
        known = self._known_models() if self._known_models is not None else frozenset()
        provider, host, port = self._upstreams.get(rec.upstream) or (None, rec.upstream, None)
        attrs: dict[str, Any] = {
            N.PROVIDER: provider or rec.dialect or rec.upstream,
            N.OPERATION: N.OPERATIONS.get(rec.operation, rec.operation),
            N.REQUEST_MODEL: cap("request_model", rec.request_model or rec.model or "unknown",
                                 admit, known),
            N.SERVER_ADDRESS: host,
        }
        if port is not None:
            attrs[N.SERVER_PORT] = port
        if rec.response_model:
            attrs[N.RESPONSE_MODEL] = cap("response_model", rec.response_model, admit, known)
        if rec.outcome != "ok":
            attrs[N.ERROR_TYPE] = str(rec.status_code) if rec.outcome == "upstream_error" \
                and rec.status_code is not None else rec.outcome
        tags = rec.tags
        for t, a in zip(self.tag_labels, self._tag_attrs, strict=True):
            attrs[a] = cap(f"tag:{t}", tags.get(t), admit)
        return attrs

    def _metrics(self, rec: CallRecord, attrs: dict[str, Any]) -> None:
        inst, tally, caps = self._inst, self._tally, self._caps
        units = rec.priced_units
        legacy = inst.get("token_usage")
        latest = "input_tokens" in tally
        key = tuple(attrs.items())
        if self._system:  # legacy instruments: also the pre-1.37 `gen_ai.system`
            provider = attrs[N.PROVIDER]
            legacy_key = (*key, (N.SYSTEM, N.LEGACY_SYSTEMS.get(provider, provider)))
        else:
            legacy_key = key
        parts: dict[str, list[tuple[str, int]]] | None = None
        for side, kinds, total, source in (
                ("input", ("input_tokens", "cache_read_tokens", "cache_write_tokens"),
                 rec.input_tokens, rec.input_source),
                ("output", ("output_tokens", "reasoning_tokens"), rec.output_tokens,
                 rec.output_source)):
            if total is None or source == "none":
                continue
            src = (*key, (N.USAGE_SOURCE, source))
            if latest:
                for kind in kinds:
                    n = getattr(rec, kind)
                    if n:
                        if parts is None:
                            parts = _modality_parts(units)
                        for modality, part in _by_modality(n, parts.get(kind)):
                            tally[kind].add((*src, (N.MODALITY, modality)), part)
            if legacy is not None:
                legacy.record(total, caps["token_usage"](
                    (*legacy_key, (N.USAGE_SOURCE, source), (N.TOKEN_TYPE, side))))
        duration = legacy_key if self._system else key
        inst["duration"].record(rec.duration_ms / 1000, caps["duration"](duration))
        if rec.ttft_ms is not None and "ttfc" in inst:
            inst["ttfc"].record(rec.ttft_ms / 1000, caps["ttfc"](key))
        if rec.cost_usd is not None:
            if rec.cost_usd:
                tally["cost"].add(key, float(rec.cost_usd))
        elif rec.unpriced:
            tally["unpriced"].add(key, 1)

    def _span(self, rec: CallRecord, shared: dict[str, Any]) -> None:
        ids = rec.trace or _root()
        if rec.download_trace is not None:
            self._download_span(rec, shared, rec.download_trace)
        if not ids.sampled or self._queue_full():
            return
        attrs = dict(shared)
        # spans carry the exact values (no cap): one span, one call
        attrs[N.REQUEST_MODEL] = rec.request_model or rec.model or "unknown"
        if rec.response_model:
            attrs[N.RESPONSE_MODEL] = rec.response_model
        for i, (t, v) in enumerate(rec.tags.items()):
            if i == N.MAX_SPAN_TAGS:
                break
            attrs[N.TAG_PREFIX + t] = v
        if rec.response_id:  # the body's own id only (not the request-id header)
            attrs[N.RESPONSE_ID] = rec.response_id
        if attrs[N.PROVIDER] == "openai" and (api := N.OPENAI_API_TYPES.get(rec.operation)):
            attrs[N.OPENAI_API_TYPE] = api
        if rec.stream and rec.ttft_ms is not None:
            attrs[N.SPAN_TTFC] = rec.ttft_ms / 1000
        for field, name in N.SPAN_USAGE.items():
            v = getattr(rec, field)
            if v is not None:
                attrs[name] = v
        for field, name in N.SPAN_OURS.items():
            v = getattr(rec, field)
            if v is not None:
                attrs[name] = v
        if rec.cost_usd is not None:
            attrs[N.SPAN_COST] = float(rec.cost_usd)
        elif rec.unpriced:
            attrs[N.SPAN_UNPRICED] = True
        failed = rec.outcome != "ok"
        self._emit(ids, f"{attrs[N.OPERATION]} {attrs[N.REQUEST_MODEL]}", attrs, rec,
                   Status(StatusCode.ERROR, rec.error or rec.outcome) if failed else _UNSET)

    def _download_span(self, rec: CallRecord, shared: dict[str, Any], ids: SpanIds) -> None:
        """A batch results download's own span (the upstream request named it as its
        parent; its lines' spans are its children): no usage of its own."""
        if not ids.sampled or self._queue_full():
            return
        attrs = {k: shared[k] for k in (N.PROVIDER, N.SERVER_ADDRESS, N.SERVER_PORT)
                 if k in shared}
        attrs[N.OPERATION] = N.BATCH_DOWNLOAD
        if rec.batch_id:
            attrs[N.SPAN_BATCH_ID] = rec.batch_id
        self._emit(ids, N.BATCH_DOWNLOAD, attrs, rec, _UNSET)

    def _queue_full(self) -> bool:
        assert self.span_exporter is not None
        if self.emitted - self.span_exporter.done >= self.cfg.queue_spans:
            self.lossy.dropped.labels("spans").inc()  # the queue is full: this one goes
            return True
        return False

    def _emit(self, ids: SpanIds, name: str, attrs: dict[str, Any], rec: CallRecord,
              status: Status) -> None:
        assert self.processor is not None
        state = TraceState.from_header([ids.tracestate]) if ids.tracestate else TraceState()
        flags = TraceFlags(ids.flags)
        parent = SpanContext(ids.trace_id, ids.parent_id, True, flags, state) \
            if ids.parent_id else None
        start = int(rec.started_ts * 1e9)
        span = ReadableSpan(
            name=name, context=SpanContext(ids.trace_id, ids.span_id, False, flags, state),
            parent=parent, resource=self.resource, attributes=attrs, kind=SpanKind.CLIENT,
            status=status, start_time=start, end_time=start + int(rec.duration_ms * 1e6),
            instrumentation_scope=self.scope)
        self.emitted += 1
        self.processor.on_end(span)


def _root() -> SpanIds:
    """A record with no span ids of its own (built outside a live call): a new trace."""
    return start_span_ids(None, None)
