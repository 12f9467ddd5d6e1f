"""build_record: usage_source at every cut point, malformed input never raises, the
count-tokens and unpriced rules, and the key fingerprint."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from proxy.dialects import DIALECTS, Observation, RequestInfo
from proxy.estimate import Estimator
from proxy.meter import Meter
from proxy.outcome import End
from proxy.pricing import PriceBook
from proxy.quota import Quota
from proxy.record import CallFacts, LiveCall, iso_utc
from proxy.recorder import (
    RECENT,
    KeyFingerprinter,
    Recorder,
    background_call_id,
    build_record,
    build_records,
)
from proxy.usage import Usage
from tests.payloads import ROOT

BODIES = {
    "openai.chat": json.dumps({"model": "gpt-4o", "stream": True,
                               "messages": [{"role": "user", "content": "hi"}]}).encode(),
    "openai.responses": json.dumps({"model": "gpt-5", "input": "hi", "stream": True}).encode(),
    "anthropic.messages": json.dumps({"model": "claude-sonnet-4-20250514", "max_tokens": 9,
                                      "messages": [{"role": "user", "content": "hi"}]}).encode(),
    "gemini.generate": json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode(),
}

# (payload, parser, dialect, number of events after which usage is fully reported,
#  number after which it is partially reported)
CUTS = [
    ("openai_chat/stream_include_usage.sse", "openai.chat", "openai", 4, 4),
    ("openai_responses/stream_completed.sse", "openai.responses", "openai", 4, 4),
    ("anthropic_messages/stream_web_search.sse", "anthropic.messages", "anthropic", 6, 1),
    ("gemini_generate/stream_crlf.sse", "gemini.generate", "gemini", 1, 1),
]


def facts_for(parser: str, dialect: str, obs: object, status: int = 200,
              end: End | None = End.UPSTREAM_CUT) -> CallFacts:
    f = CallFacts("c1", 1767000000.0, 10.0, dialect, dialect, "chat", "POST", "/x",
                  parser=parser, request_body=BODIES.get(parser, b""), status_code=status,
                  end=end, ended=11.0, stream=True, path_model="gemini-2.5-flash")
    f.observation = obs  # type: ignore[assignment]
    return f


@pytest.mark.parametrize("name,parser,dialect,full_at,partial_at", CUTS)
def test_cut_at_every_event_boundary(estimator: Estimator, name: str, parser: str,
                                     dialect: str, full_at: int, partial_at: int) -> None:
    body = (ROOT / name).read_bytes()
    ends = [m.end() for m in re.finditer(rb"\r\n\r\n|\n\n", body)]
    for i, cut in enumerate([0, *ends]):
        meter = Meter(DIALECTS[parser], "text/event-stream", None)
        meter.feed(body[:cut])
        rec = build_record(facts_for(parser, dialect, meter.finish()), estimator, PriceBook(),
                           lambda c: None)
        want = "reported" if i >= full_at else "partial" if i >= partial_at else "estimated"
        assert rec.usage_source == want, (name, i)
        assert rec.input_tokens is not None and rec.output_tokens is not None
        assert rec.total_tokens == rec.input_tokens + rec.output_tokens
        assert (rec.estimator is None) == (want == "reported")
        assert rec.cost_usd is not None


def test_count_tokens_is_free_not_consumption(estimator: Estimator) -> None:
    meter = Meter(DIALECTS["free.count_tokens"], "application/json", None)
    meter.feed(b'{"input_tokens": 2095}')
    f = facts_for("free.count_tokens", "anthropic", meter.finish(), end=None)
    rec = build_record(f, estimator, PriceBook(), lambda c: None)
    assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == (0, 0, Decimal(0))
    assert json.loads(rec.usage_raw or "") == {"input_tokens": 2095}


def test_unpriced_model_has_null_cost(estimator: Estimator) -> None:
    meter = Meter(DIALECTS["openai.chat"], "application/json", None)
    meter.feed(b'{"model":"mystery-7b","usage":{"prompt_tokens":5,"completion_tokens":2}}')
    rec = build_record(facts_for("openai.chat", "local", meter.finish(), end=None),
                       estimator, PriceBook(), lambda c: None)
    assert rec.cost_usd is None and rec.price_source is None and rec.usage_source == "reported"


def test_key_fingerprint_is_keyed_and_stable(tmp_path: object) -> None:
    a = KeyFingerprinter(b"secret-a")
    b = KeyFingerprinter(b"secret-b")
    assert a("sk-live-123") == a("sk-live-123") != b("sk-live-123")
    assert "sk-live" not in (a("sk-live-123") or "")
    assert a(None) is None


def test_request_info_from_the_request_path_spares_a_second_parse(estimator: Estimator) -> None:
    """The handler parsed the body once: the record takes its RequestInfo and parsed body
    and never parses the body again (a body that was no JSON stays unparsed)."""
    from proxy.dialects.base import Observation, RequestInfo
    from proxy.usage import Usage

    obs = Observation(Usage(12, 0, 0, None, 3), response_model="gpt-4o-2024-08-06",
                      status="complete")
    f = facts_for("openai.chat", "openai", obs, end=None)
    f.request_body = b"{ not json: a parse here would fail }"
    f.request_info = RequestInfo("gpt-4o", True, "user-7", None)
    rec = build_record(f, estimator, PriceBook(), lambda c: None)
    # the end user is the handler's attribution (facts.end_user: it may have switched the
    # body's user off), never read again from the request
    assert (rec.request_model, rec.end_user) == ("gpt-4o", None)
    f.end_user = "user-9"
    assert build_record(f, estimator, PriceBook(), lambda c: None).end_user == "user-9"
    assert (rec.input_tokens, rec.output_tokens, rec.usage_source) == (12, 3, "reported")
    # input not reported: the estimate reads the body the handler parsed
    f2 = facts_for("openai.chat", "openai", Observation(Usage(None, None, None, None, 3)),
                   end=None)
    f2.request_info = RequestInfo("gpt-4o", True, None, None)
    f2.request_doc = json.loads(f2.request_body)
    f2.request_body = b"{ not json: a parse here would fail }"
    rec2 = build_record(f2, estimator, PriceBook(), lambda c: None)
    assert rec2.input_source == "estimated" and (rec2.input_tokens or 0) > 0


def test_live_running_cost_is_priced_like_the_final_record(estimator: Estimator) -> None:
    """A cached Anthropic stream: the live feed's cost counts cache reads and writes at
    their own prices, as the ledger row will (one pricer for both)."""
    from proxy.dialects.anthropic.usage import from_anthropic
    from proxy.record import LiveCall
    from proxy.recorder import Recorder

    usage = from_anthropic({"input_tokens": 12, "cache_read_input_tokens": 8000,
                            "cache_creation_input_tokens": 300, "output_tokens": 180,
                            "cache_creation": {"ephemeral_5m_input_tokens": 200,
                                               "ephemeral_1h_input_tokens": 100}})
    recorder = Recorder(estimator, PriceBook(), lambda c: None, [])
    call = LiveCall("c1", "2026-11-30T00:00:00.000Z", "anthropic", "messages", True, None, None,
                    None, "claude-sonnet-4-20250514", usage.input_tokens, usage.output_tokens,
                    usage_source="reported", price_provider="anthropic", usage=usage)
    recorder.progress(call)
    # $3 in, $0.30 cache read, $3.75 5m write, $6 1h write, $15 out per million
    hand = (12 * 3 + 8000 * Decimal("0.3") + 200 * Decimal("3.75") + 100 * 6 + 180 * 15) \
        / Decimal(1_000_000)
    assert call.cost_usd == float(hand)
    assert "usage" not in call.to_json() and call.to_json()["cost_usd"] == float(hand)


def live_chat(body: dict[str, object]) -> LiveCall:
    """A gpt-4o stream in flight, 3 output tokens in, input not reported (OpenAI streams
    report usage at the end)."""
    raw = json.dumps(body).encode()
    call = LiveCall("c1", iso_utc(1767000000.0), "openai", "chat", True, None, None, None,
                    "gpt-4o", dialect=DIALECTS["openai.chat"], request_doc=body,
                    request_bytes=len(raw))
    call.usage_source, call.usage = "estimated", Usage(output_tokens=3)
    return call


def test_running_cost_counts_the_input_not_reported_yet(estimator: Estimator) -> None:
    body = json.loads(BODIES["openai.chat"])
    call = live_chat(body)
    Recorder(estimator, PriceBook(), lambda c: None, []).progress(call)
    assert call.input_tokens and call.input_tokens > 0
    # gpt-4o: $2.50 per million input tokens, $10 per million output tokens
    assert call.cost_usd == pytest.approx((call.input_tokens * 2.5 + 3 * 10) / 1e6)
    # the record of that call cut there estimates the input the same way
    f = facts_for("openai.chat", "openai", Observation(usage=Usage(output_tokens=3)))
    rec = build_record(f, estimator, PriceBook(), lambda c: None)
    assert rec.input_tokens == call.input_tokens
    assert rec.cost_usd is not None and float(rec.cost_usd) == call.cost_usd


async def test_running_cost_of_a_large_request_counts_its_input_once_estimated(
        estimator: Estimator) -> None:
    body = {"model": "gpt-4o", "stream": True,
            "messages": [{"role": "user", "content": "word " * 20_000}]}  # > 64 KiB
    call = live_chat(body)
    recorder = Recorder(estimator, PriceBook(), lambda c: None, [])
    recorder.progress(call)  # estimated in a worker thread: the stream is not held
    await asyncio.wait_for(asyncio.shield(call.input_estimate), 30)  # the worker's answer
    recorder.progress(call)
    assert call.input_tokens and call.input_tokens > 20_000
    assert call.cost_usd == pytest.approx((call.input_tokens * 2.5 + 3 * 10) / 1e6)


async def test_calls_the_full_queue_turns_away_are_exported(estimator: Estimator) -> None:
    """A drop is a counted fact on /metrics, not only a Python attribute."""
    from prometheus_client import CollectorRegistry, generate_latest

    from proxy.recorder import Recorder
    from proxy.sinks.metrics import Metrics

    metrics = Metrics(CollectorRegistry())
    recorder = Recorder(estimator, PriceBook(), lambda c: None, [metrics], queue_size=2,
                        on_drop=metrics.record_dropped)
    for i in range(5):  # the worker is not started: two fit, three are turned away
        recorder.submit(CallFacts(f"c{i}", 1767000000.0, 10.0, "openai", "openai", "chat",
                                  "POST", "/openai/v1/chat/completions", ended=11.0))
    assert recorder.dropped == 3
    text = generate_latest(metrics.registry).decode()
    assert "tokenbooth_records_dropped_total 3.0" in text.splitlines()
    recorder.start()
    await recorder.drain()  # the two queued calls are still recorded
    assert recorder.recorded == 2
    assert "tokenbooth_requests_total" in generate_latest(metrics.registry).decode()


async def test_find_waits_for_a_queued_call_and_keeps_the_recent_ones(
        estimator: Estimator) -> None:
    recorder = Recorder(estimator, PriceBook(), lambda c: None, [])
    meter = Meter(DIALECTS["openai.chat"], "application/json", None)
    meter.feed(b'{"model":"gpt-4o","usage":{"prompt_tokens":5,"completion_tokens":2}}')
    facts = facts_for("openai.chat", "openai", meter.finish(), end=None)
    assert await recorder.find("c1") is None  # never seen: no wait
    recorder.submit(facts)  # queued: the worker has not built it yet
    waiting = asyncio.ensure_future(recorder.find("c1"))  # runs before the worker: waits
    recorder.start()
    try:
        rec = await asyncio.wait_for(waiting, 5)
        assert rec is not None and rec.call_id == "c1" and rec.input_tokens == 5
        for i in range(RECENT):
            recorder.submit(replace(facts, call_id=f"n{i}"))
        assert (await recorder.find(f"n{RECENT - 1}")) is not None
        assert await recorder.find("c1") is None and len(recorder.recent) == RECENT
    finally:
        await recorder.aclose()


def test_batch_lines_end_as_their_own_results(estimator: Estimator) -> None:
    """A download cut after its last whole line: each line's row says how its request
    ended (the file's own ending is not the line's); the download's status stays."""
    meter = Meter(DIALECTS["openai.batch"], "application/octet-stream", None)
    meter.feed((ROOT / "openai_batch" / "output.jsonl").read_bytes() + b'{"id": "batch_req_4"')
    f = facts_for("openai.batch", "openai", meter.finish(), end=End.UPSTREAM_CUT)
    f.stream, f.batch_id, f.operation = False, "file-out1", "batch"
    # the download's own rate-limit headers are no result line's
    f.quota = Quota({"x-ratelimit-limit-requests": "5000"}, (), 1767000000.0)
    recs = build_records(f, estimator, PriceBook(), lambda c: None)
    assert [(r.outcome, r.status_code, r.error) for r in recs] == [
        ("ok", 200, None), ("ok", 200, None),
        ("upstream_error", 200, "provider error: server_error")]  # its type, never its text
    assert [r.quota for r in recs] == [None] * 3
    # with no result lines the download is one ordinary row, ended as it was cut
    empty = facts_for("openai.batch", "openai", Observation(), end=End.UPSTREAM_CUT)
    empty.batch_id = "file-out1"
    empty.quota = f.quota
    (rec,) = build_records(empty, estimator, PriceBook(), lambda c: None)
    assert (rec.operation, rec.outcome, rec.status_code, rec.error) == (
        "other", "upstream_aborted", 200, "upstream closed the stream early")


def test_build_record_is_the_only_builder_of_a_call_record() -> None:
    """Live calls, batch result lines and imported transcripts all become records through
    build_record: a new column is written there once, nowhere else."""
    import ast

    builders = []
    for path in sorted((ROOT.parent.parent / "proxy").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "CallRecord":
                    builders.append(f"{path.name}:{fn.name}")
    assert builders == ["recorder.py:build_record"]


def test_what_the_dialect_measures_or_estimates_is_marked(estimator: Estimator) -> None:
    """A dialect settles what the provider bills by the request: measured (exact) is
    `measured`; a side it estimated is `estimated` under its estimator's name, never
    estimated again; an unanswered call is not settled at all."""
    from proxy.dialects.base import Observation

    text = Observation(status="complete")
    f = facts_for("openai.transcription", "openai", text, end=None)
    f.request_doc = {"model": "whisper-1", "audio_seconds": 61.6}
    rec = build_record(f, estimator, PriceBook(), lambda c: None)
    assert (rec.usage_source, rec.estimator, rec.priced_units) == \
        ("measured", None, {"audio_seconds": 62, "input_audio_seconds": 62})
    assert rec.cost_usd == 62 * Decimal("0.36") / 3600  # whisper-1: $0.006 a minute
    assert (rec.input_source, rec.output_source) == ("reported", "reported")

    f = facts_for("openai.transcription", "openai", text, end=None)
    f.request_doc = {"model": "gpt-4o-mini-transcribe", "audio_seconds": 3.0}
    rec = build_record(f, estimator, PriceBook(), lambda c: None)
    # 1,000 audio tokens a minute: 50; no transcript text, so no output
    assert (rec.usage_source, rec.input_tokens, rec.output_tokens) == ("estimated", 50, 0)
    assert rec.estimator == "tiktoken:o200k_base+audio-duration"
    assert rec.cost_usd == 50 * 3 / Decimal(1_000_000)  # $3 per million audio tokens

    f = facts_for("openai.transcription", "openai", text, status=500, end=None)
    f.request_doc = {"model": "whisper-1", "audio_seconds": 61.6}
    rec = build_record(f, estimator, PriceBook(), lambda c: None)
    assert (rec.usage_source, rec.cost_usd, rec.priced_units) == ("none", None, None)


def test_an_upload_no_duration_can_be_read_from_stays_unpriced(estimator: Estimator) -> None:
    """whisper-1 in `text` format of a WebM upload: no duration, no usage; the transcript's
    estimated tokens have no whisper price: NULL, never $0."""
    from proxy.dialects.base import Observation, StreamAcc

    acc = StreamAcc(status="complete")
    acc.text.add("Hello there, general audience.")
    f = facts_for("openai.transcription", "openai", acc.build(), end=None)
    f.request_doc = {"model": "whisper-1", "audio_seconds": None}
    rec = build_record(f, estimator, PriceBook(), lambda c: None)
    assert rec.usage_source == "estimated" and rec.cost_usd is None and rec.unpriced
    assert isinstance(f.observation, Observation)


    assert rec.quota is f.quota  # an ordinary call keeps its response's


def _background(status: str, usage: dict[str, int] | None) -> bytes:
    return json.dumps({"id": "resp_bg_9", "object": "response", "status": status,
                       "background": True, "model": "gpt-4.1-2025-04-14", "output": [],
                       "usage": usage}).encode()


def _observed(parser: str, body: bytes) -> Observation:
    meter = Meter(DIALECTS[parser], "application/json", None)
    meter.feed(body)
    return meter.finish()


def test_a_background_create_is_pending_neither_estimated_nor_priced(
        estimator: Estimator) -> None:
    f = facts_for("openai.responses", "openai",
                  _observed("openai.responses", _background("queued", None)), end=None)
    f.request_body = json.dumps({"model": "gpt-4.1", "input": "hi " * 50,
                                 "background": True}).encode()
    (rec,) = build_records(f, estimator, PriceBook(), lambda c: None)
    assert (rec.usage_source, rec.cost_usd, rec.price_source, rec.outcome) == (
        "pending", None, None, "ok")
    assert rec.input_tokens is None and rec.output_tokens is None and rec.estimator is None
    assert rec.upstream_request_id == "resp_bg_9" and not rec.unpriced


def test_a_background_response_seen_finished_is_a_row_of_its_own(estimator: Estimator) -> None:
    usage = {"input_tokens": 1000, "output_tokens": 100, "total_tokens": 1100}
    f = facts_for("openai.responses_retrieve", "openai",
                  _observed("openai.responses_retrieve", _background("completed", usage)),
                  end=None)
    f.operation, f.method, f.request_body, f.path_model = "retrieve", "GET", b"", None
    f.tags = {"agent": "poller-2"}
    create = facts_for("openai.responses", "openai", Observation(), end=None)
    create.tags, create.credential = {"agent": "writer", "session": "s-9"}, "sk-abc"
    create.path_model, create.request_info = None, RequestInfo("gpt-4.1")
    own, linked = build_records(f, estimator, PriceBook(), lambda c: c and "k_" + c[-3:],
                                origin=create)
    assert (own.operation, own.cost_usd, own.price_source, own.input_tokens) == (
        "retrieve", Decimal(0), "free", 0)
    assert own.agent == "poller-2" and own.call_id == "c1"
    assert linked.call_id == background_call_id("openai", "resp_bg_9")
    assert (linked.operation, linked.usage_source, linked.outcome) == (
        "responses", "reported", "ok")
    # gpt-4.1: 1000 in at $2, 100 out at $8 (per million)
    assert linked.cost_usd == (1000 * Decimal(2) + 100 * Decimal(8)) / 1_000_000
    # attributed as its create was, not as whoever retrieved it
    assert (linked.agent, linked.session, linked.key_id) == ("writer", "s-9", "k_abc")
    assert linked.ttft_ms is None and linked.request_model == "gpt-4.1"
    assert linked.response_model == "gpt-4.1-2025-04-14" and linked.model == "gpt-4.1"


def test_a_cancelled_background_response_keeps_what_was_reported(estimator: Estimator) -> None:
    """Cancelled with no usage reported: nothing is estimated; its cost is unknown."""
    f = facts_for("openai.responses_retrieve", "openai",
                  _observed("openai.responses_retrieve", _background("cancelled", None)),
                  end=None)
    _, linked = build_records(f, estimator, PriceBook(), lambda c: None)
    assert (linked.usage_source, linked.input_tokens, linked.output_tokens) == (
        "none", None, None)
    assert linked.cost_usd is None and linked.estimator is None and linked.unpriced


def test_background_call_ids_are_stable_and_never_a_live_calls() -> None:
    one = background_call_id("openai", "resp_1")
    assert one == background_call_id("openai", "resp_1") != background_call_id("azure",
                                                                                "resp_1")
    assert len(one) == 24 and one[0] == "g" and re.fullmatch("[0-9a-f]{23}", one[1:])


async def test_seeing_a_background_response_finished_again_records_nothing(
        estimator: Estimator) -> None:
    """The recorder asks which usage rows were recorded before (the ledger answers)."""
    seen: set[str] = set()

    async def recorded(ids: list[str]) -> set[str]:
        before = seen & set(ids)
        seen.update(ids)
        return before

    from tests.conftest import Collector

    sink = Collector()
    recorder = Recorder(estimator, PriceBook(), lambda c: None, [sink], recorded=recorded)
    recorder.start()
    usage = {"input_tokens": 10, "output_tokens": 1, "total_tokens": 11}
    try:
        for n in range(2):
            f = facts_for("openai.responses_retrieve", "openai",
                          _observed("openai.responses_retrieve",
                                    _background("completed", usage)), end=None)
            f.call_id, f.operation = f"r{n}", "retrieve"
            recorder.submit(f)
        await sink.wait_for(3)
    finally:
        await recorder.aclose()
    assert [r.call_id for r in sink.records] == [
        "r0", background_call_id("openai", "resp_bg_9"), "r1"]


def test_each_record_carries_a_span_of_its_own_under_the_calls_parent(
        estimator: Estimator) -> None:
    """OTel spans on: a call's record has the span ids chosen at its start (the upstream
    was told them); a batch download's span (the one the upstream was told) rides on its
    first line's record, to be emitted, and each line gets a span of its own under it."""
    from proxy.tracecontext import start_span_ids

    ids = start_span_ids("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "k=v")
    meter = Meter(DIALECTS["openai.batch"], "application/octet-stream", None)
    meter.feed((ROOT / "openai_batch" / "output.jsonl").read_bytes())
    f = facts_for("openai.batch", "openai", meter.finish())
    f.stream, f.batch_id, f.operation, f.trace = False, "file-out1", "batch", ids
    recs = build_records(f, estimator, PriceBook(), lambda c: None)
    assert len(recs) == 3
    assert {(r.trace.trace_id, r.trace.parent_id, r.trace.tracestate)
            for r in recs if r.trace} == {(ids.trace_id, ids.span_id, "k=v")}
    assert len({r.trace.span_id for r in recs if r.trace} | {ids.span_id}) == 4
    assert [r.download_trace for r in recs] == [ids, None, None]
    plain = facts_for("openai.chat", "openai", Observation())
    plain.trace = ids
    (rec,) = build_records(plain, estimator, PriceBook(), lambda c: None)
    assert rec.trace == ids and rec.started_ts == plain.started
    plain.trace = None  # spans off: no ids at all
    assert build_records(plain, estimator, PriceBook(), lambda c: None)[0].trace is None


def test_the_response_id_is_the_bodys_own_never_the_request_id_header(
        estimator: Estimator) -> None:
    """`upstream_request_id` falls back to the request-id header (the ledger's column);
    `response_id` (the OTel span's gen_ai.response.id) is only the body's own id."""
    f = facts_for("openai.chat", "openai", Observation())
    f.request_id_header = "req_abc"
    rec = build_record(f, estimator, PriceBook(), lambda c: None)
    assert (rec.upstream_request_id, rec.response_id) == ("req_abc", None)
    f = facts_for("openai.chat", "openai", Observation(upstream_request_id="chatcmpl-9"))
    f.request_id_header = "req_abc"
    rec = build_record(f, estimator, PriceBook(), lambda c: None)
    assert (rec.upstream_request_id, rec.response_id) == ("chatcmpl-9", "chatcmpl-9")


async def test_a_dropped_call_releases_what_admission_held_for_it(
        tmp_path: Path, estimator: Estimator) -> None:
    """Its record will never settle it: the budget's reservation is released at once and
    the rate limit counts it as a call never answered (a request, 0 tokens), not as its
    reservation for good. cap-model: $1 per million output tokens; max_tokens 1000: a worst
    case of $0.001 held in the $0.0015 budget: a second call (0.002 > 0.0015) is refused
    until the dropped one's hold is released."""
    from prometheus_client import CollectorRegistry

    from proxy.admission import Admission, Denied
    from proxy.admission.budgets import BudgetCheck, LocalBudgets
    from proxy.admission.rates import RateCheck
    from proxy.config import RateLimitConfig
    from proxy.recorder import Recorder
    from proxy.sinks.budgets import Budgets
    from tests.budget_stores import budget
    from tests.test_admission import call, config

    cfg = config(tmp_path)
    check = BudgetCheck([budget("cap", 0.0015, {"agent": "bot"})])
    await check.open(LocalBudgets())
    rates = RateCheck([RateLimitConfig("tpm", {"agent": "bot"}, tokens_per_minute=100_000)])
    admission = Admission((rates, check), PriceBook(cfg.prices), estimator)
    recorder = Recorder(estimator, PriceBook(), lambda c: None,
                        [Budgets(check, CollectorRegistry(), rates=rates)], queue_size=1)
    first, route = call(cfg, "c0")
    assert await admission.admit(first, route) is None
    (log,) = rates.logs
    held_tokens = log.tokens
    assert held_tokens > 1000  # the input estimate plus max_tokens
    recorder.submit(CallFacts("other", 1767000000.0, 10.0, "openai", "openai", "chat",
                              "POST", "/openai/v1/chat/completions", ended=11.0))
    recorder.submit(first)  # the queue (one) is full: c0 is dropped
    assert recorder.dropped == 1
    assert check.windows[0].held == 0 and check.windows[0].reserved == {}
    assert (log.requests, log.tokens) == (1, 0)  # c0: a request that used nothing
    # c0's $0.001 held, a second $0.001 would make 0.002 > 0.0015; released, it fits
    assert await admission.admit(*call(cfg, "c2")) is None
    assert isinstance(await admission.admit(*call(cfg, "c3")), Denied)  # as c2's is held
