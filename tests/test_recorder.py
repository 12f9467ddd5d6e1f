"""Recorder: the live running cost priced like the final record, the full queue's drops
(counted, exported, released from admission), find(), and a background response's usage
row recorded once."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from proxy.build import background_call_id, build_record
from proxy.dialects import DIALECTS, Observation
from proxy.estimate import Estimator
from proxy.meter import Meter
from proxy.pricing import PriceBook
from proxy.record import CallFacts, CallRecord, LiveCall, iso_utc
from proxy.recorder import RECENT, Recorder
from proxy.usage import Usage
from tests.test_build import BODIES, background_body, facts_for, observed


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
                          observed("openai.responses_retrieve",
                                    background_body("completed", usage)), end=None)
            f.call_id, f.operation = f"r{n}", "retrieve"
            recorder.submit(f)
        await sink.wait_for(3)
    finally:
        await recorder.aclose()
    assert [r.call_id for r in sink.records] == [
        "r0", background_call_id("openai", "resp_bg_9"), "r1"]


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


async def test_sinks_that_observe_are_called_in_order_without_a_coroutine(
        estimator: Estimator) -> None:
    """A sink with `observe` gets each record there (its `handle` is not awaited); the
    sinks still run in their order, sync and async mixed, and a failing one is counted
    while the others still see the record."""
    from tests.conftest import Collector

    seen: list[str] = []

    class Observer:
        def __init__(self, name: str, fail: bool = False) -> None:
            self.name, self.fail = name, fail

        def observe(self, record: object) -> None:
            seen.append(self.name)
            if self.fail:
                raise RuntimeError("sink broke")

        async def handle(self, record: object) -> None:
            seen.append(f"{self.name} handle")

    class Tail(Collector):
        async def handle(self, record: CallRecord) -> None:
            seen.append("collector")
            await super().handle(record)

    failed: list[str] = []
    tail = Tail()
    recorder = Recorder(estimator, PriceBook(), lambda c: None,
                        [Observer("first", fail=True), tail, Observer("last")],
                        on_sink_error=failed.append)
    recorder.start()
    try:
        meter = Meter(DIALECTS["openai.chat"], "application/json", None)
        meter.feed(b'{"model":"gpt-4o","usage":{"prompt_tokens":5,"completion_tokens":2}}')
        recorder.submit(facts_for("openai.chat", "openai", meter.finish(), end=None))
        await tail.wait_for(1)
    finally:
        await recorder.aclose()
    assert seen == ["first", "collector", "last"]
    assert failed == ["first"]
    assert recorder.recorded == 1
    # every sink observes: the same, without the async one
    seen.clear()
    recorder = Recorder(estimator, PriceBook(), lambda c: None,
                        [Observer("first", fail=True), Observer("last")],
                        on_sink_error=failed.append)
    recorder.start()
    meter = Meter(DIALECTS["openai.chat"], "application/json", None)
    meter.feed(b'{"model":"gpt-4o","usage":{"prompt_tokens":5,"completion_tokens":2}}')
    recorder.submit(facts_for("openai.chat", "openai", meter.finish(), end=None))
    await recorder.aclose()  # drains: the record is handed on before it returns
    assert seen == ["first", "last"]
    assert failed == ["first", "first"]
