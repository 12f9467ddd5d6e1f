"""Real OTLP receivers on 127.0.0.1 for the tests: HTTP/protobuf (an aiohttp app) and gRPC
(a grpc.aio server implementing the collector services), both decoding what they receive
with opentelemetry-proto into one `Received` store the tests read.

Metrics are cumulative: the latest data point of each (metric, attributes) is its value.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as ms_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as ts_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


@dataclass
class Point:
    metric: str
    unit: str
    kind: str  # sum | histogram
    attributes: dict[str, Any]
    value: float  # a sum's value; a histogram's sum
    count: int = 0  # a histogram's count
    resource: dict[str, Any] = field(default_factory=dict)


@dataclass
class Received:
    spans: list[Any] = field(default_factory=list)  # opentelemetry.proto Span
    span_resources: list[dict[str, Any]] = field(default_factory=list)
    points: dict[tuple[str, frozenset[tuple[str, Any]]], Point] = field(default_factory=dict)
    headers: list[dict[str, str]] = field(default_factory=list)
    metric_exports: int = 0
    trace_exports: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def add_metrics(self, req: ms.ExportMetricsServiceRequest) -> None:
        self.metric_exports += 1
        for rm in req.resource_metrics:
            res = attrs(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    if kind == "sum":
                        for p in m.sum.data_points:
                            a = attrs(p.attributes)
                            v = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                            self.points[(m.name, frozenset(a.items()))] = Point(
                                m.name, m.unit, "sum", a, v, resource=res)
                    elif kind == "histogram":
                        for p in m.histogram.data_points:
                            a = attrs(p.attributes)
                            self.points[(m.name, frozenset(a.items()))] = Point(
                                m.name, m.unit, "histogram", a, p.sum, p.count, resource=res)
        self.event.set()

    def add_traces(self, req: ts.ExportTraceServiceRequest) -> None:
        self.trace_exports += 1
        for rs in req.resource_spans:
            res = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(s)
                    self.span_resources.append(res)
        self.event.set()

    def total(self, metric: str, **match: Any) -> float:
        return sum(p.value for p in self.points.values() if p.metric == metric
                   and all(p.attributes.get(k) == v for k, v in match.items()))

    def count(self, metric: str, **match: Any) -> int:
        return sum(p.count for p in self.points.values() if p.metric == metric
                   and all(p.attributes.get(k) == v for k, v in match.items()))

    def metrics(self) -> set[str]:
        return {p.metric for p in self.points.values()}

    def span_by_call(self) -> dict[str, Any]:
        """The spans of ledger rows by call id (a batch download's own span has none)."""
        out = {}
        for s in self.spans:
            call = attrs(s.attributes).get("tokenbooth.call_id")
            if call is not None:
                out[call] = s
        return out

    async def until(self, cond: Any, timeout: float = 15.0, what: str = "telemetry") -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"{what} not received within {timeout} s")
            self.event.clear()
            try:
                await asyncio.wait_for(self.event.wait(), min(left, 0.5))
            except TimeoutError:
                pass


def _body(raw: bytes, encoding: str | None) -> bytes:
    return gzip.decompress(raw) if encoding == "gzip" else raw


@asynccontextmanager
async def http_receiver(hang: asyncio.Event | None = None, port: int = 0
                        ) -> AsyncIterator[tuple[str, Received]]:
    """An OTLP/HTTP protobuf receiver on 127.0.0.1 (`port`, else any free one); yields its
    base URL and what it received. With `hang`, until the event is set the collector does
    not answer: an export that arrives then waits, and is never recorded (its sender gave
    up long ago); once set, exports are answered and recorded again."""
    got = Received()

    async def hung(request: web.Request) -> bool:
        if hang is None or hang.is_set():
            return False
        await hang.wait()
        return True

    def export(request_type: Any, add: Callable[[Any], None],
               response_type: Any) -> Callable[[web.Request], Awaitable[web.Response]]:
        """The handler of one signal's exports: each decoded into `got` by `add`."""

        async def handle(request: web.Request) -> web.Response:
            if await hung(request):
                return web.Response(status=503)
            got.headers.append(dict(request.headers))
            req = request_type()
            req.ParseFromString(_body(await request.read(),
                                      request.headers.get("Content-Encoding")))
            add(req)
            return web.Response(body=response_type().SerializeToString(),
                                content_type="application/x-protobuf")

        return handle

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/metrics", export(ms.ExportMetricsServiceRequest, got.add_metrics,
                                              ms.ExportMetricsServiceResponse))
    app.router.add_post("/v1/traces", export(ts.ExportTraceServiceRequest, got.add_traces,
                                             ts.ExportTraceServiceResponse))
    server = TestServer(app, host="127.0.0.1", port=port or None)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), got
    finally:
        if hang is not None:
            hang.set()
        await server.close()


class _Export:
    """One signal's gRPC export service: each request decoded into `got` by `add`."""

    def __init__(self, got: Received, add: Callable[[Any], None], response: Any) -> None:
        self.got, self.add, self.response = got, add, response

    async def Export(self, request: Any, context: Any) -> Any:  # gRPC names the method
        self.got.headers.append({k: v for k, v in context.invocation_metadata()})
        self.add(request)
        return self.response()


class _Metrics(_Export, ms_grpc.MetricsServiceServicer):
    pass


class _Traces(_Export, ts_grpc.TraceServiceServicer):
    pass


@asynccontextmanager
async def grpc_receiver() -> AsyncIterator[tuple[str, Received]]:
    """An OTLP/gRPC receiver; yields its endpoint (http://127.0.0.1:port) and what it got."""
    got = Received()
    server = grpc.aio.server()
    ms_grpc.add_MetricsServiceServicer_to_server(
        _Metrics(got, got.add_metrics, ms.ExportMetricsServiceResponse), server)
    ts_grpc.add_TraceServiceServicer_to_server(
        _Traces(got, got.add_traces, ts.ExportTraceServiceResponse), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", got
    finally:
        await server.stop(grace=None)
