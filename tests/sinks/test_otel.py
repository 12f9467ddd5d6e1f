"""The OTel sink on its own: records in, OTLP out to a real receiver on 127.0.0.1. Names
per `semconv`, tokens by modality, cost and unpriced apart, bounded attributes, one span
per record; and the default start-up never loads OpenTelemetry."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry

from proxy.config import OtelConfig, parse
from proxy.sinks import otel_names as N
from proxy.sinks.otel import OtelSink
from tests.factories import make_record
from tests.otlp import Received, attrs, http_receiver

USAGE = "gen_ai.client.inference.usage."
UPSTREAMS = parse({"upstreams": {"openai": {"url": "https://api.openai.com"},
                                 "anthropic": {"url": "https://api.anthropic.com:8443"}}},
                  env={}).upstreams


async def run(records: list[Any], registry: CollectorRegistry | None = None,
              **cfg: Any) -> tuple[Received, OtelSink]:
    """The records through a started sink; closing it exports everything left."""
    sink_args = {k: cfg.pop(k) for k in ("tag_labels", "max_label_values", "max_series")
                 if k in cfg}
    async with http_receiver() as (url, got):
        sink = OtelSink(OtelConfig(endpoint=url, export_interval_seconds=60, **cfg),
                        registry or CollectorRegistry(), upstreams=UPSTREAMS, **sink_args)
        sink.start()
        for rec in records:
            sink.observe(rec)
        await sink.aclose()
    return got, sink


AUDIO = make_record(call_id="audio", operation="realtime", input_tokens=1000,
                    cache_read_tokens=400, output_tokens=300, reasoning_tokens=0,
                    priced_units={"input_audio_tokens": 700, "cache_audio_read_tokens": 300,
                                  "output_audio_tokens": 250}, ttft_ms=120.0, stream=True)


async def test_latest_names_tokens_by_modality() -> None:
    got, _ = await run([AUDIO, make_record(call_id="text", reasoning_tokens=4)])
    assert got.metrics() == {USAGE + "input_tokens", USAGE + "output_tokens",
                             USAGE + "cache_read.input_tokens",
                             USAGE + "reasoning.output_tokens",
                             "gen_ai.client.operation.duration",
                             "gen_ai.client.operation.time_to_first_chunk", "tokenbooth.cost"}
    m = N.MODALITY
    # AUDIO (broken down by the provider): 1000 in = 700 audio + the rest, 300, text; the
    # text record (no breakdown: the conventions' `unknown`): its 100
    assert got.total(USAGE + "input_tokens", **{m: "audio"}) == 700
    assert got.total(USAGE + "input_tokens", **{m: "text"}) == 300
    assert got.total(USAGE + "input_tokens", **{m: "unknown"}) == 100
    assert got.total(USAGE + "cache_read.input_tokens", **{m: "audio"}) == 300
    assert got.total(USAGE + "cache_read.input_tokens", **{m: "text"}) == 100
    assert got.total(USAGE + "cache_read.input_tokens", **{m: "unknown"}) == 20
    assert got.total(USAGE + "output_tokens", **{m: "audio"}) == 250
    assert got.total(USAGE + "output_tokens", **{m: "text"}) == 50
    assert got.total(USAGE + "output_tokens", **{m: "unknown"}) == 10
    assert got.total(USAGE + "reasoning.output_tokens", **{m: "unknown"}) == 4
    assert got.count("gen_ai.client.operation.time_to_first_chunk") == 1
    ttfc = next(p for p in got.points.values()
                if p.metric == "gen_ai.client.operation.time_to_first_chunk")
    assert (ttfc.value, ttfc.unit) == (0.12, "s")
    assert got.total("tokenbooth.cost") == 0.002  # 0.001 USD each (the factory's)


async def test_gemini_video_and_cached_image_parts_and_totals_equal_the_columns() -> None:
    """Every modality part a dialect reports (here Gemini's, as proxy.dialects.gemini.usage
    names them) is counted under its modality; each class still adds up to its column."""
    gem = make_record(call_id="g", upstream="gemini", dialect="gemini",
                      operation="generate_content", input_tokens=2000, cache_read_tokens=900,
                      output_tokens=400, reasoning_tokens=100,
                      priced_units={"input_video_tokens": 1200, "input_audio_tokens": 300,
                                    "input_tool_tokens": 50,  # part of input, not a modality
                                    "cache_video_read_tokens": 600,
                                    "cache_image_read_tokens": 200,
                                    "output_video_tokens": 250, "output_image_tokens": 50})
    got, _ = await run([gem])
    m = N.MODALITY

    def by_modality(metric: str) -> dict[str, float]:
        return {p.attributes[m]: p.value for p in got.points.values()
                if p.metric == USAGE + metric}

    # 2000 = 1200 video + 300 audio + 500 text (the rest of a class broken down)
    assert by_modality("input_tokens") == {"video": 1200, "audio": 300, "text": 500}
    assert by_modality("cache_read.input_tokens") == {"video": 600, "image": 200, "text": 100}
    assert by_modality("output_tokens") == {"video": 250, "image": 50, "text": 100}
    assert by_modality("reasoning.output_tokens") == {"unknown": 100}  # no breakdown


async def test_legacy_names_only() -> None:
    got, _ = await run([AUDIO], semconv="legacy")
    assert got.metrics() == {"gen_ai.client.token.usage", "gen_ai.client.operation.duration",
                             "tokenbooth.cost"}
    assert got.total("gen_ai.client.token.usage", **{N.TOKEN_TYPE: "input"}) == 1000
    assert got.total("gen_ai.client.token.usage", **{N.TOKEN_TYPE: "output"}) == 300


async def test_legacy_instruments_also_carry_gen_ai_system() -> None:
    """`semconv: legacy|both`: dashboards built on the pre-1.37 names filter on
    `gen_ai.system` (with its pre-1.37 values, `xai` for x_ai): the legacy instruments carry
    it beside `gen_ai.provider.name`; the latest ones do not."""
    recs = [AUDIO, make_record(call_id="x", upstream="xai", request_model="grok-4")]
    for semconv in ("legacy", "both"):
        got, _ = await run(recs, semconv=semconv)
        for metric in ("gen_ai.client.token.usage", "gen_ai.client.operation.duration"):
            systems = {(p.attributes[N.PROVIDER], p.attributes[N.SYSTEM])
                       for p in got.points.values() if p.metric == metric}
            assert systems == {("openai", "openai"), ("x_ai", "xai")}, (semconv, metric)
        assert got.total("gen_ai.client.token.usage", **{N.SYSTEM: "xai",
                                                         N.TOKEN_TYPE: "input"}) == 100
        assert not [p for p in got.points.values()
                    if p.metric.startswith(USAGE) and N.SYSTEM in p.attributes]
    got, _ = await run(recs)  # latest: no gen_ai.system anywhere
    assert not [p for p in got.points.values() if N.SYSTEM in p.attributes]


async def test_series_per_instrument_are_capped_overflow_counted_totals_kept() -> None:
    """Like the Prometheus families (`metrics.max_series`): at most that many attribute
    sets per instrument, the last one the `other` set; every record landing there is
    counted in tokenbooth_otel_series_overflow_total{instrument}; totals are unchanged."""
    recs = [make_record(call_id=f"c{i}", request_model=f"m{i}", model=f"m{i}",
                        response_model=None, ttft_ms=100.0) for i in range(10)]
    registry = CollectorRegistry()
    got, _ = await run(recs, registry=registry, max_series=4, semconv="both")
    for metric in (USAGE + "input_tokens", "tokenbooth.cost",
                   "gen_ai.client.operation.duration", "gen_ai.client.token.usage"):
        sets = [p.attributes for p in got.points.values() if p.metric == metric]
        models = sorted(a[N.REQUEST_MODEL] for a in sets)
        per_model = 2 if metric == "gen_ai.client.token.usage" else 1  # input and output
        if per_model == 1:
            assert models == ["m0", "m1", "m2", "other"], metric
        other = [a for a in sets if a[N.REQUEST_MODEL] == "other"]
        assert other and all(set(a.values()) == {"other"} for a in other), metric
        assert len(sets) <= 4, metric
    assert got.total(USAGE + "input_tokens") == 10 * 100
    assert got.total(USAGE + "input_tokens", **{N.REQUEST_MODEL: "other"}) == 7 * 100
    assert got.total("tokenbooth.cost") == 10 * 0.001
    assert got.count("gen_ai.client.operation.duration") == 10
    assert got.count("gen_ai.client.operation.time_to_first_chunk") == 10

    def overflow(name: str) -> float | None:
        return registry.get_sample_value("tokenbooth_otel_series_overflow_total",
                                         {"instrument": name})

    assert overflow(USAGE + "input_tokens") == 7
    assert overflow("tokenbooth.cost") == 7
    assert overflow("gen_ai.client.operation.duration") == 7
    assert overflow("gen_ai.client.token.usage") == 20 - 3  # 2 sets a call, 3 own sets


async def test_both_emits_each_name_once() -> None:
    got, _ = await run([AUDIO], semconv="both")
    assert {"gen_ai.client.token.usage", USAGE + "input_tokens",
            "gen_ai.client.operation.time_to_first_chunk"} <= got.metrics()
    assert got.count("gen_ai.client.operation.duration") == 1


async def test_unpriced_is_counted_apart_never_as_zero_cost() -> None:
    unpriced = make_record(call_id="u", model="mystery", request_model="mystery",
                           cost_usd=None, price_source=None)
    free = make_record(call_id="f", model="llama3", request_model="llama3",
                       cost_usd=Decimal(0), price_source="free")
    failed = make_record(call_id="x", outcome="upstream_error", status_code=500,
                         cost_usd=None, input_tokens=None, output_tokens=None,
                         cache_read_tokens=None, cache_write_tokens=None,
                         reasoning_tokens=None, total_tokens=None, usage_source="none",
                         input_source="none", output_source="none", error="HTTP 500")
    got, _ = await run([unpriced, free, failed])
    assert got.total("tokenbooth.calls.unpriced") == 1
    assert got.total("tokenbooth.calls.unpriced", **{N.REQUEST_MODEL: "mystery"}) == 1
    assert "tokenbooth.cost" not in got.metrics()  # nothing priced above 0
    assert got.count("gen_ai.client.operation.duration", **{N.ERROR_TYPE: "500"}) == 1
    spans = got.span_by_call()
    assert N.SPAN_COST not in attrs(spans["u"].attributes)
    assert attrs(spans["u"].attributes)[N.SPAN_UNPRICED] is True
    assert attrs(spans["f"].attributes)[N.SPAN_COST] == 0.0
    assert N.SPAN_UNPRICED not in attrs(spans["f"].attributes)
    assert spans["x"].status.code == 2 and spans["x"].status.message == "HTTP 500"


async def test_attributes_are_bounded_spans_exact() -> None:
    recs = [make_record(call_id=f"c{i}", request_model=f"m{i}", model=f"m{i}",
                        response_model=None, tags={"team": f"t{i}", "session": f"s{i}"})
            for i in range(10)]
    got, _ = await run(recs, max_label_values=3, tag_labels=("team",))
    values = {p.attributes[N.REQUEST_MODEL] for p in got.points.values()}
    assert values == {"m0", "m1", "m2", "other"}
    assert {p.attributes[N.TAG_PREFIX + "team"] for p in got.points.values()} == \
        {"t0", "t1", "t2", "other"}
    assert not any(N.TAG_PREFIX + "session" in p.attributes for p in got.points.values())
    spans = got.span_by_call()
    a = attrs(spans["c9"].attributes)
    assert (a[N.REQUEST_MODEL], a[N.TAG_PREFIX + "team"], a[N.TAG_PREFIX + "session"]) == \
        ("m9", "t9", "s9")
    assert spans["c9"].name == "chat m9"


async def test_provider_server_and_operation_names() -> None:
    got, _ = await run([make_record(call_id="a", upstream="anthropic", dialect="anthropic",
                                    operation="messages", request_model="claude-sonnet-4-6")])
    (span,) = got.spans
    a = attrs(span.attributes)
    assert (a[N.PROVIDER], a[N.OPERATION], a[N.SERVER_ADDRESS], a[N.SERVER_PORT]) == \
        ("anthropic", "chat", "api.anthropic.com", 8443)
    assert span.parent_span_id == b"" and len(span.trace_id) == 16  # no call context: a root
    assert got.span_resources[0]["service.name"] == "tokenbooth"


async def test_operation_names_follow_the_conventions() -> None:
    """openai.md: the Responses API is `chat`, told apart by `openai.api.type`;
    gen-ai-realtime-spans.md: a realtime response is `realtime_inference`."""
    got, _ = await run([
        make_record(call_id="r", operation="responses", request_model="gpt-5"),
        make_record(call_id="c", operation="chat"),
        make_record(call_id="rt", operation="realtime", request_model="gpt-realtime"),
        make_record(call_id="a", upstream="anthropic", dialect="anthropic",
                    operation="messages", request_model="claude-sonnet-4-6")])
    spans = got.span_by_call()

    def names(call: str) -> tuple[str, str | None, str]:
        a = attrs(spans[call].attributes)
        return a[N.OPERATION], a.get(N.OPENAI_API_TYPE), spans[call].name

    assert names("r") == ("chat", "responses", "chat gpt-5")
    assert names("c") == ("chat", "chat_completions", "chat gpt-4o")
    assert names("rt") == ("realtime_inference", None, "realtime_inference gpt-realtime")
    assert names("a") == ("chat", None, "chat claude-sonnet-4-6")  # openai.* only on openai
    assert {p.attributes[N.OPERATION] for p in got.points.values()} == \
        {"chat", "realtime_inference"}


async def test_span_response_id_body_only_and_time_to_first_chunk_on_streams() -> None:
    got, _ = await run([
        make_record(call_id="hdr", upstream_request_id="req_hdr", response_id=None),
        make_record(call_id="body", upstream_request_id="chatcmpl-7", response_id="chatcmpl-7",
                    stream=True, ttft_ms=250.0)], metrics=False)
    spans = got.span_by_call()
    assert N.RESPONSE_ID not in attrs(spans["hdr"].attributes)  # a request id is no answer
    body = attrs(spans["body"].attributes)
    assert (body[N.RESPONSE_ID], body[N.SPAN_TTFC]) == ("chatcmpl-7", 0.25)
    assert N.SPAN_TTFC not in attrs(spans["hdr"].attributes)


async def test_a_batch_download_emits_its_own_span_with_its_lines_under_it() -> None:
    """The upstream request of a batch results download named the download's span as its
    parent: that span is emitted (from the first line's record), the lines' under it."""
    from proxy.tracecontext import start_span_ids

    download = start_span_ids(f"00-{'ab' * 16}-{'cd' * 8}-01", None)
    lines = [make_record(call_id=f"b{i}", operation="batch", batch_id="file-out1",
                         trace=download.child(),
                         download_trace=download if i == 0 else None) for i in range(3)]
    got, sink = await run(lines, metrics=False)
    assert len(got.spans) == 4 and sink.emitted == 4
    (own,) = [s for s in got.spans if s.span_id.hex() == f"{download.span_id:016x}"]
    assert own.name == N.BATCH_DOWNLOAD and own.parent_span_id.hex() == "cd" * 8
    a = attrs(own.attributes)
    assert (a[N.OPERATION], a[N.SPAN_BATCH_ID], a[N.PROVIDER]) == \
        (N.BATCH_DOWNLOAD, "file-out1", "openai")
    assert "tokenbooth.call_id" not in a and "gen_ai.usage.input_tokens" not in a
    for i in range(3):
        line = got.span_by_call()[f"b{i}"]
        assert line.parent_span_id == own.span_id and line.trace_id == own.trace_id


def test_the_default_start_up_never_loads_opentelemetry() -> None:
    code = ("import sys\n"
            "from proxy.app import make_app\n"
            "from proxy.config import parse\n"
            "make_app(parse({}, env={}))\n"
            "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'grpc'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_every_name_has_its_prometheus_translation() -> None:
    names = {i.name: N.prometheus_name(i) for i in N.INSTRUMENTS}
    assert names == {
        "gen_ai.client.inference.usage.input_tokens":
            "gen_ai_client_inference_usage_input_tokens_total",
        "gen_ai.client.inference.usage.output_tokens":
            "gen_ai_client_inference_usage_output_tokens_total",
        "gen_ai.client.inference.usage.cache_read.input_tokens":
            "gen_ai_client_inference_usage_cache_read_input_tokens_total",
        "gen_ai.client.inference.usage.cache_write.input_tokens":
            "gen_ai_client_inference_usage_cache_write_input_tokens_total",
        "gen_ai.client.inference.usage.reasoning.output_tokens":
            "gen_ai_client_inference_usage_reasoning_output_tokens_total",
        "gen_ai.client.operation.duration": "gen_ai_client_operation_duration_seconds",
        "gen_ai.client.operation.time_to_first_chunk":
            "gen_ai_client_operation_time_to_first_chunk_seconds",
        "gen_ai.client.token.usage": "gen_ai_client_token_usage",
        "tokenbooth.cost": "tokenbooth_cost_USD_total",
        "tokenbooth.calls.unpriced": "tokenbooth_calls_unpriced_total",
    }


async def test_span_tags_are_bounded() -> None:
    tags = {f"k{i:02d}": "v" * 256 for i in range(40)}
    got, _ = await run([make_record(call_id="t", tags=tags)], metrics=False)
    a = attrs(got.spans[0].attributes)
    assert sorted(k for k in a if k.startswith(N.TAG_PREFIX)) == \
        [f"{N.TAG_PREFIX}k{i:02d}" for i in range(32)]
