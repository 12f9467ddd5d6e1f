"""End to end: OTLP export of metrics and spans to a real receiver on 127.0.0.1 (HTTP/protobuf
and gRPC, decoded with opentelemetry-proto), equal to the ledger's rows; the proxy's span a
child of the client's traceparent and the upstream's parent; the collector down or hanging:
calls unaffected, the span queue bounded, drops counted."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy import state
from proxy.sinks import otel_names as N
from tests.conftest import FakeUpstream, Proxy, Reply, Sdks, StartProxy, free_port
from tests.dialects.openai.audio_files import mp3
from tests.e2e.test_audio import TEXT, TOKENS_USAGE
from tests.e2e.test_batches import OPENAI_FILE
from tests.e2e.test_ledger_metrics import rows, run_mixed_workload, scrape
from tests.otlp import Received, attrs, grpc_receiver, http_receiver

USAGE = "gen_ai.client.inference.usage."
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
KIND_CLIENT = 3  # opentelemetry.proto Span.SpanKind.SPAN_KIND_CLIENT
STATUS_ERROR = 2


def otel(endpoint: str, **extra: Any) -> dict[str, Any]:
    return {"endpoint": endpoint, "export_interval_seconds": 0.2, "timeout_seconds": 2,
            **extra}


async def mixed_calls(upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> list[Any]:
    """The mixed workload of the ledger/metrics test (JSON and streamed, cached, reasoning,
    estimated, unpriced, failed, client-aborted) plus a token-billed audio transcription;
    returns the ledger rows."""
    await run_mixed_workload(upstream, proxy, sdk)
    upstream.on("/v1/audio/transcriptions",
                Reply([json.dumps({"text": TEXT, "usage": TOKENS_USAGE}).encode()]))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    await oa.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.mp3", mp3(2.0)))
    await proxy.collector.wait_for(9)
    await proxy.app[state.LEDGER].flush()
    got = rows(proxy)
    assert len(got) == 9
    return got


def assert_metrics_equal_ledger(got: Received, ledger: list[Any]) -> None:
    metered = [r for r in ledger if r["usage_source"] != "none"]
    for col, metric in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
                        ("cache_read_tokens", "cache_read.input_tokens"),
                        ("cache_write_tokens", "cache_write.input_tokens"),
                        ("reasoning_tokens", "reasoning.output_tokens")):
        assert got.total(USAGE + metric) == sum(r[col] or 0 for r in metered), col
    # the transcription's input, broken down by the provider: 167 audio + 13 text; every
    # other call's tokens (no breakdown) under `unknown`
    assert got.total(USAGE + "input_tokens", **{N.MODALITY: "audio"}) == 167
    assert got.total(USAGE + "input_tokens", **{N.MODALITY: "text"}) == 13
    assert got.total(USAGE + "input_tokens", **{N.MODALITY: "unknown"}) == \
        sum(r["input_tokens"] or 0 for r in metered) - 180
    assert got.total(USAGE + "output_tokens", **{N.MODALITY: "unknown"}) == \
        sum(r["output_tokens"] or 0 for r in metered)
    estimated = sum(r["input_tokens"] for r in metered if r["usage_source"] == "estimated")
    assert estimated and got.total(USAGE + "input_tokens",
                                   **{N.USAGE_SOURCE: "estimated"}) == estimated
    assert got.total("tokenbooth.cost") == pytest.approx(
        sum(r["cost_usd"] or 0 for r in ledger), rel=1e-12, abs=1e-15)
    # the unpriced model is counted apart, never as a cost of 0
    assert got.total("tokenbooth.calls.unpriced") == 1
    assert got.total("tokenbooth.calls.unpriced", **{N.REQUEST_MODEL: "mystery-7b"}) == 1
    assert not [p for p in got.points.values() if p.metric == "tokenbooth.cost"
                and p.attributes[N.REQUEST_MODEL] == "mystery-7b"]
    assert got.count("gen_ai.client.operation.duration") == len(ledger)
    assert got.count("gen_ai.client.operation.duration", **{N.ERROR_TYPE: "500"}) == 1
    assert got.count("gen_ai.client.operation.duration",
                     **{N.ERROR_TYPE: "client_aborted"}) == 1
    assert got.count("gen_ai.client.operation.time_to_first_chunk") == \
        len([r for r in ledger if r["ttft_ms"] is not None])
    assert {p.unit for p in got.points.values() if p.metric.startswith(USAGE)} == {"{token}"}
    assert {p.resource["service.name"] for p in got.points.values()} == {"tokenbooth"}


def assert_spans_equal_ledger(got: Received, ledger: list[Any]) -> None:
    spans = got.span_by_call()
    assert set(spans) == {r["call_id"] for r in ledger}
    for r in ledger:
        s = spans[r["call_id"]]
        a = attrs(s.attributes)
        assert s.kind == KIND_CLIENT
        assert s.name == f"{a[N.OPERATION]} {r['request_model']}"
        for col, name in N.SPAN_USAGE.items():
            assert a.get(name) == r[col], (r["call_id"], col)
        assert a.get(N.SPAN_COST) == r["cost_usd"]
        assert a.get(N.SPAN_UNPRICED, False) is (r["model"] == "mystery-7b")
        assert (a["tokenbooth.outcome"], a["tokenbooth.usage_source"],
                a.get("tokenbooth.price_source")) == (r["outcome"], r["usage_source"],
                                                      r["price_source"])
        assert a.get(N.RESPONSE_MODEL) == r["response_model"]
        for k, v in json.loads(r["tags"]).items():
            assert a[N.TAG_PREFIX + k] == v
        # start and end are the record's (the ledger's text has milliseconds)
        started_ms = time.mktime(time.strptime(r["started_at"][:19], "%Y-%m-%dT%H:%M:%S")) \
            - time.timezone
        assert abs(s.start_time_unix_nano / 1e6 - (started_ms * 1000 + int(
            r["started_at"][20:23]))) < 1.0
        assert (s.end_time_unix_nano - s.start_time_unix_nano) / 1e6 == \
            pytest.approx(r["duration_ms"], abs=0.001)
        if r["outcome"] == "ok":
            assert s.status.code != STATUS_ERROR and N.ERROR_TYPE not in a
        else:
            assert s.status.code == STATUS_ERROR and a[N.ERROR_TYPE]
    failed = spans[next(r["call_id"] for r in ledger if r["outcome"] == "upstream_error")]
    assert attrs(failed.attributes)[N.ERROR_TYPE] == "500"
    audio = next(s for s in spans.values()
                 if attrs(s.attributes)[N.OPERATION] == "transcription")
    assert attrs(audio.attributes)["gen_ai.usage.input_tokens"] == 180


async def test_http_metrics_and_spans_equal_the_ledger(upstream: FakeUpstream,
                                                        start_proxy: StartProxy,
                                                        sdk: Sdks) -> None:
    async with http_receiver() as (url, got):
        proxy = await start_proxy(otel=otel(url, semconv="both",
                                            headers={"x-collector-token": "t0k"}))
        ledger = await mixed_calls(upstream, proxy, sdk)
        await got.until(lambda: len(got.spans) >= len(ledger)
                        and got.count("gen_ai.client.operation.duration") == len(ledger),
                        what="every call's span and duration")
        assert_metrics_equal_ledger(got, ledger)
        assert_spans_equal_ledger(got, ledger)
        # legacy names beside the latest ones (`semconv: both`)
        assert got.total("gen_ai.client.token.usage", **{N.TOKEN_TYPE: "input"}) == \
            sum(r["input_tokens"] or 0 for r in ledger if r["usage_source"] != "none")
        assert all(h.get("x-collector-token") == "t0k" for h in got.headers)
        assert len(got.spans) == len(ledger)  # one span per call, not more


async def test_grpc_span_is_the_child_of_the_client_and_the_parent_of_the_upstream(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    async with grpc_receiver() as (endpoint, got):
        # capitalised as people write it: gRPC metadata keys must be lowercase (the config
        # lowercases them, else every export fails)
        proxy = await start_proxy(otel=otel(endpoint, protocol="grpc",
                                            headers={"Authorization": "Bearer g"}))
        upstream.on("/v1/chat/completions", Reply([json.dumps({
            "id": "c1", "model": "gpt-4o-2024-08-06",
            "usage": {"prompt_tokens": 10, "completion_tokens": 2}}).encode()]))
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                              json={"model": "gpt-4o", "messages": []},
                              headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
                                       "tracestate": "vendor=abc"}) as r:
                assert r.status == 200
                call_id = r.headers["X-Meter-Call-Id"]
        await got.until(lambda: call_id in got.span_by_call()
                        and got.total(USAGE + "input_tokens") == 10)
        span = got.span_by_call()[call_id]
        assert span.trace_id.hex() == CLIENT_TRACE
        assert span.parent_span_id.hex() == CLIENT_SPAN
        assert span.trace_state == "vendor=abc"
        seen = upstream.requests[-1].headers
        version, trace, parent, flags = seen["traceparent"].split("-")
        assert (version, trace, parent, flags) == ("00", CLIENT_TRACE, span.span_id.hex(),
                                                   "01")
        assert seen["tracestate"] == "vendor=abc"
        assert got.total(USAGE + "output_tokens", **{N.PROVIDER: "openai",
                                                     N.OPERATION: "chat",
                                                     N.SERVER_ADDRESS: "127.0.0.1"}) == 2
        assert got.headers and all(h.get("authorization") == "Bearer g" for h in got.headers)


async def test_without_a_traceparent_the_span_starts_a_trace_the_upstream_continues(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    async with http_receiver() as (url, got):
        proxy = await start_proxy(otel=otel(url, metrics=False))
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{proxy.url}/openai/v1/chat/completions", json={}) as r:
                await r.read()
                call_id = r.headers["X-Meter-Call-Id"]
        await got.until(lambda: call_id in got.span_by_call())
        span = got.span_by_call()[call_id]
        assert span.parent_span_id == b""
        _, trace, parent, _ = upstream.requests[-1].headers["traceparent"].split("-")
        assert (trace, parent) == (span.trace_id.hex(), span.span_id.hex())
        assert got.metric_exports == 0  # metrics off


async def test_tracestate_goes_on_only_with_its_valid_traceparent_joined_and_valid(
        upstream: FakeUpstream, start_proxy: StartProxy,
        caplog: pytest.LogCaptureFixture) -> None:
    """W3C: a call whose traceparent is invalid starts a new trace, and the upstream gets
    none of the client's tracestate; several tracestate lines are one list (joined with
    `,`); an invalid tracestate is dropped silently (no SDK warning per span)."""
    async with http_receiver() as (url, got):
        proxy = await start_proxy(otel=otel(url, metrics=False))
        parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        cases = {
            "invalid_parent": [("traceparent", "00-garbage"), ("tracestate", "vendor=abc")],
            "no_parent": [("tracestate", "vendor=abc")],
            "two_lines": [("traceparent", parent), ("tracestate", "rojo=1"),
                          ("tracestate", "congo=2")],
            "invalid_state": [("traceparent", parent), ("tracestate", "Vendor=abc")],
        }
        calls: dict[str, str] = {}
        seen: dict[str, Any] = {}
        states: list[list[str]] = []  # each upstream request's tracestate lines

        async def reply(request: web.Request) -> web.Response:
            states.append(request.headers.getall("tracestate", []))
            return web.json_response({"id": "c", "model": "gpt-4o", "usage": {
                "prompt_tokens": 1, "completion_tokens": 1}})

        upstream.on("/v1/chat/completions", reply)
        with caplog.at_level("WARNING", logger="opentelemetry"):
            async with aiohttp.ClientSession() as s:
                for name, headers in cases.items():
                    async with s.post(f"{proxy.url}/openai/v1/chat/completions", json={},
                                      headers=CIMultiDict(headers)) as r:
                        await r.read()
                        calls[name] = r.headers["X-Meter-Call-Id"]
                    seen[name] = upstream.requests[-1].headers
            await got.until(lambda: set(calls.values()) <= set(got.span_by_call()))
        spans = got.span_by_call()
        for name in ("invalid_parent", "no_parent"):
            span = spans[calls[name]]
            assert span.parent_span_id == b"" and span.trace_state == ""
            assert "tracestate" not in seen[name], name
            assert seen[name]["traceparent"].split("-")[1] == span.trace_id.hex()
        assert states == [[], [], ["rojo=1,congo=2"], []]
        assert spans[calls["two_lines"]].trace_state == "rojo=1,congo=2"
        assert "tracestate" not in seen["invalid_state"]
        assert spans[calls["invalid_state"]].parent_span_id.hex() == CLIENT_SPAN
        assert spans[calls["invalid_state"]].trace_state == ""
        assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] \
            == []


async def test_a_batch_download_span_is_emitted_the_upstreams_parent_its_lines_children(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    """The upstream request of a batch results download names the proxy's span as its
    parent: that span is exported (`batch_download`, a child of the client's), and each
    result line's span is its child."""
    upstream.on("/v1/files/file-out1/content", Reply([OPENAI_FILE],
                                                      headers={"Content-Type": "text/plain"}))
    async with http_receiver() as (url, got):
        proxy = await start_proxy(otel=otel(url, metrics=False))
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{proxy.url}/openai/v1/files/file-out1/content", headers={
                    "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}) as r:
                assert await r.read() == OPENAI_FILE
        records = await proxy.collector.wait_for(3)
        await got.until(lambda: len(got.spans) == 4)
    _, trace, parent, _ = upstream.requests[-1].headers["traceparent"].split("-")
    (own,) = [sp for sp in got.spans if sp.span_id.hex() == parent]
    assert trace == CLIENT_TRACE and own.trace_id.hex() == CLIENT_TRACE
    assert (own.name, own.parent_span_id.hex()) == (N.BATCH_DOWNLOAD, CLIENT_SPAN)
    assert attrs(own.attributes)[N.SPAN_BATCH_ID] == "file-out1"
    lines = got.span_by_call()
    assert set(lines) == {r.call_id for r in records}
    assert {sp.parent_span_id.hex() for sp in lines.values()} == {parent}


async def test_spans_off_traceparent_passes_through_untouched(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    async with http_receiver() as (url, got):
        proxy = await start_proxy(otel=otel(url, spans=False))
        sent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{proxy.url}/openai/v1/chat/completions", json={},
                              headers={"traceparent": sent}) as r:
                await r.read()
        await got.until(lambda: got.count("gen_ai.client.operation.duration") == 1)
        assert upstream.requests[-1].headers["traceparent"] == sent
        assert got.spans == [] and got.trace_exports == 0


async def _calls(proxy: Proxy, n: int) -> list[float]:
    """n calls, 8 at a time; each must succeed; returns their durations."""
    took: list[float] = []

    async def one(s: aiohttp.ClientSession) -> None:
        t0 = time.monotonic()
        async with s.post(f"{proxy.url}/openai/v1/chat/completions", json={}) as r:
            assert r.status == 200
            await r.read()
        took.append(time.monotonic() - t0)

    async with aiohttp.ClientSession() as s:
        for _ in range(n // 8):
            await asyncio.gather(*(one(s) for _ in range(8)))
    return took


def _dropped(m: dict[str, list[Any]], signal: str) -> float:
    return sum(x.value for x in m["tokenbooth_otel_dropped_total"]
               if x.labels["signal"] == signal)


def _failed(m: dict[str, list[Any]], signal: str) -> float:
    return sum(x.value for x in m["tokenbooth_otel_export_failures_total"]
               if x.labels["signal"] == signal)


@pytest.mark.parametrize("down", ["closed_port", "hanging"])
async def test_collector_down_calls_unaffected_memory_bounded_drops_counted_then_recovers(
        upstream: FakeUpstream, start_proxy: StartProxy, down: str) -> None:
    """The collector down, as a closed port (connections refused) or as a collector that
    accepts and never answers, then back on the same address. Down: every call still
    succeeds at once; the spans waiting for export never exceed the queue (8), both in our
    own count and in the SDK's own queue (so memory stays bounded however long it lasts: a
    bounded run of 160 calls stands for the 30 s, the queue fills within the first export);
    every span that could not be delivered is counted, and the metric exports' failures too.
    Back: new spans arrive, the cumulative metric totals equal the ledger's (the calls made
    while it was down included), and every span was either delivered or counted as dropped,
    never both."""
    upstream.on("/v1/chat/completions", Reply([json.dumps({
        "id": "c1", "model": "gpt-4o-2024-08-06",
        "usage": {"prompt_tokens": 10, "completion_tokens": 2}}).encode()]))
    hang = asyncio.Event()
    port = free_port()
    async with AsyncExitStack() as stack:
        got: Received | None = None
        if down == "hanging":
            _, got = await stack.enter_async_context(http_receiver(hang=hang, port=port))
        proxy = await start_proxy(otel=otel(f"http://127.0.0.1:{port}", queue_spans=8,
                                            timeout_seconds=0.5))
        sink = next(s for s in proxy.app[state.RECORDER].sinks if s.name == "otel")
        sdk_queue = sink.processor._batch_processor._queue  # the SDK's own span queue
        n = 160
        peak = sdk_peak = 0

        async def watch() -> None:
            nonlocal peak, sdk_peak
            while True:
                peak = max(peak, sink.emitted - sink.span_exporter.done)
                sdk_peak = max(sdk_peak, len(sdk_queue))
                await asyncio.sleep(0.005)

        watcher = asyncio.get_running_loop().create_task(watch())
        took = await _calls(proxy, n)
        await proxy.collector.wait_for(n)
        watcher.cancel()
        assert len(took) == n and max(took) < 1.0  # calls are not held up by the export
        assert peak <= 8 and sdk_peak <= 8  # spans held for export: never more than 8
        await proxy.app[state.LEDGER].flush()
        assert len(rows(proxy)) == n  # every call is in the ledger

        # every span that could not be delivered is counted: here, all of them
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            m = await scrape(proxy)
            if _dropped(m, "spans") == n and _failed(m, "metrics") \
                    or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert _dropped(m, "spans") == n
        assert _failed(m, "metrics") >= 1  # metric exports failed too (counted)
        assert got is None or got.spans == []

        # the collector is back
        before = {r["call_id"] for r in rows(proxy)}
        if down == "closed_port":
            _, got = await stack.enter_async_context(http_receiver(port=port))
        else:
            hang.set()
        assert got is not None
        back = got
        new: set[str] = set()
        for _ in range(2):  # 8 calls at a time: never more than the queue at once
            await _calls(proxy, 8)
            await proxy.collector.wait_for(n + len(new) + 8)
            await proxy.app[state.LEDGER].flush()
            new = {r["call_id"] for r in rows(proxy)} - before
            await back.until(lambda want=frozenset(new): want <= set(back.span_by_call()),
                             timeout=10,
                             what="the spans of the calls made once the collector is back")
        assert len(new) == 16
        ledger = rows(proxy)
        await back.until(lambda: back.count("gen_ai.client.operation.duration") == n + 16,
                         timeout=10, what="every call's duration")
        assert got.total(USAGE + "input_tokens") == sum(r["input_tokens"] for r in ledger) \
            == 10 * (n + 16)
        assert got.total(USAGE + "output_tokens") == sum(r["output_tokens"] for r in ledger)
        # each span delivered or counted as dropped, never both, never twice
        m = await scrape(proxy)
        assert _dropped(m, "spans") == n and len(got.spans) == 16 == len(got.span_by_call())
