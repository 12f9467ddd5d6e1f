"""A local OTLP/HTTP protobuf receiver for `run.py --otel`: decodes every export (as a
collector would) and answers 200; prints the spans and data points it got at exit.

    python bench/otlp_receiver.py PORT
"""

from __future__ import annotations

import sys

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts

got = {"spans": 0, "points": 0}


async def metrics(request: web.Request) -> web.Response:
    req = ms.ExportMetricsServiceRequest()
    req.ParseFromString(await request.read())
    got["points"] += sum(len(getattr(m, m.WhichOneof("data")).data_points)
                         for rm in req.resource_metrics for sm in rm.scope_metrics
                         for m in sm.metrics)
    return web.Response(body=ms.ExportMetricsServiceResponse().SerializeToString(),
                        content_type="application/x-protobuf")


async def traces(request: web.Request) -> web.Response:
    req = ts.ExportTraceServiceRequest()
    req.ParseFromString(await request.read())
    got["spans"] += sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
    return web.Response(body=ts.ExportTraceServiceResponse().SerializeToString(),
                        content_type="application/x-protobuf")


def main() -> None:
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/metrics", metrics)
    app.router.add_post("/v1/traces", traces)

    async def report(_app: web.Application) -> None:
        print(f"otlp receiver: {got['spans']} spans, {got['points']} data points", flush=True)

    app.on_shutdown.append(report)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
