"""build_record: usage_source at every cut point, malformed input never raises, the
count-tokens and unpriced rules, batch result lines, background responses' usage rows, and
each record's span ids."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

from proxy.build import background_call_id, build_record, build_records
from proxy.dialects import DIALECTS, Observation, RequestInfo
from proxy.estimate import Estimator
from proxy.meter import Meter
from proxy.outcome import End
from proxy.pricing import PriceBook
from proxy.quota import Quota
from proxy.record import CallFacts
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
    assert builders == ["build.py:build_record"]


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


def background_body(status: str, usage: dict[str, int] | None) -> bytes:
    return json.dumps({"id": "resp_bg_9", "object": "response", "status": status,
                       "background": True, "model": "gpt-4.1-2025-04-14", "output": [],
                       "usage": usage}).encode()


def observed(parser: str, body: bytes) -> Observation:
    meter = Meter(DIALECTS[parser], "application/json", None)
    meter.feed(body)
    return meter.finish()


def test_a_background_create_is_pending_neither_estimated_nor_priced(
        estimator: Estimator) -> None:
    f = facts_for("openai.responses", "openai",
                  observed("openai.responses", background_body("queued", None)), end=None)
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
                  observed("openai.responses_retrieve", background_body("completed", usage)),
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
                  observed("openai.responses_retrieve", background_body("cancelled", None)),
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
