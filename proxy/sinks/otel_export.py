"""The OTel sink's exporters and what they lose.

`exporters` makes the OTLP span and metric exporters the config names (gRPC or HTTP, with
its headers and timeout). `CountingSpanExporter` and `CountingMetricExporter` wrap them and
count, on the Prometheus registry (`Lossy`), each export that failed and each span it lost;
the span exporter also counts the spans that left the queue, which bounds it. They run in
the SDK's own export threads, never on the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry, Counter

from proxy.config import OtelConfig
from proxy.sinks import otel_names as N

__all__ = ["CountingMetricExporter", "CountingSpanExporter", "Lossy", "exporters"]

log = logging.getLogger("tokenbooth.otel")


class Lossy:
    """What the export lost, counted on the Prometheus registry (thread-safe there)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter(N.DROPPED, "Telemetry the OTLP export lost (full queue, "
                               "failed export), by signal.", ("signal",), registry=registry)
        self.failures = Counter(N.EXPORT_FAILURES, "OTLP export attempts that failed, "
                                "by signal.", ("signal",), registry=registry)
        for signal in ("spans", "metrics"):
            self.dropped.labels(signal)
            self.failures.labels(signal)
        self.overflow = Counter(N.SERIES_OVERFLOW, "Records whose OTel attribute set went to "
                                "the `other` set: the instrument held metrics.max_series "
                                "sets.", ("instrument",), registry=registry)


class CountingSpanExporter(SpanExporter):
    """The OTLP span exporter, counting what it could not deliver, and how many spans left
    the queue (`done`: written by the export thread only; `emitted` by the loop only)."""

    def __init__(self, inner: SpanExporter, lossy: Lossy, timeout: float) -> None:
        self.inner = inner
        self.lossy = lossy
        self.timeout = timeout
        self.done = 0
        self.deadline: float | None = None  # at shutdown: one deadline for what is left

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            if self.deadline is not None and time.monotonic() > self.deadline:
                result = SpanExportResult.FAILURE
            else:
                result = self.inner.export(spans)
        except Exception:
            log.exception("OTLP span export failed")
            result = SpanExportResult.FAILURE
        finally:
            self.done += len(spans)
        if result is not SpanExportResult.SUCCESS:
            self.lossy.failures.labels("spans").inc()
            self.lossy.dropped.labels("spans").inc(len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingMetricExporter(MetricExporter):
    """The OTLP metric exporter, counting failed exports (the totals are cumulative: the
    next export that succeeds carries them)."""

    def __init__(self, inner: MetricExporter, lossy: Lossy) -> None:
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self.inner = inner
        self.lossy = lossy

    def export(self, metrics_data: Any, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            log.exception("OTLP metric export failed")
            result = MetricExportResult.FAILURE
        if result is not MetricExportResult.SUCCESS:
            self.lossy.failures.labels("metrics").inc()
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def exporters(cfg: OtelConfig) -> tuple[Callable[[], SpanExporter],
                                         Callable[[], MetricExporter]]:
    headers = dict(cfg.headers)
    if cfg.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetrics,
        )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpans,
        )

        insecure = cfg.url.startswith("http://")
        return (lambda: GrpcSpans(endpoint=cfg.url, insecure=insecure, headers=headers,
                                  timeout=cfg.timeout_seconds),
                lambda: GrpcMetrics(endpoint=cfg.url, insecure=insecure, headers=headers,
                                    timeout=cfg.timeout_seconds))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetrics,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpans,
    )

    return (lambda: HttpSpans(endpoint=f"{cfg.url}/v1/traces", headers=headers,
                              timeout=cfg.timeout_seconds),
            lambda: HttpMetrics(endpoint=f"{cfg.url}/v1/metrics", headers=headers,
                                timeout=cfg.timeout_seconds))
