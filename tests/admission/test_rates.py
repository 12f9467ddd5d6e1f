"""Rate limits: a sliding window log per limit admits exactly what fits in the last minute
(or hour, for dollars) and refuses the rest with the wait until enough of the window ages
out; a call's reservation (input estimate plus max_tokens) is settled to what it used; a
call refused by a later check leaves the log; a consumer key's own limits act as
`key:<id>`; on a shared PostgreSQL ledger one SQL call decides rate limits and budgets
together (both reserved or neither) and the row write settles the log."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from proxy.admission import Admission, Denied
from proxy.admission.budgets import BudgetCheck
from proxy.admission.rate_fleet import FleetRates
from proxy.admission.rate_headers import Dim, RateView
from proxy.admission.rates import RateCheck
from proxy.backends import open_backend
from proxy.config import BudgetConfig, Config, RateLimitConfig
from proxy.dialects import DIALECTS
from proxy.estimate import Estimator
from proxy.keys import ConsumerKey, KeyLimits
from proxy.pricing import PriceBook
from proxy.record import CallFacts, iso_utc
from proxy.routing import Route, resolve
from tests.budget_stores import BudgetLedger, budget, open_budgets
from tests.conftest import make_config
from tests.factories import make_record

# cap-model: input free, $1.00 per million output tokens: max_tokens=1000 is a worst case of
# 1000 * $1 / 1e6 = $0.001.
PRICES = {"models": {"cap-model": {"input": 0, "output": 1.0}}}
MSGS = [{"role": "user", "content": "hi"}]


class Clock:
    """Monotonic seconds the test moves by hand (the log's own clock parameter)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, "http://127.0.0.1:9", pricing=PRICES)


def call(cfg: Config, call_id: str, agent: str = "bot", max_tokens: int | None = 1000,
         key: ConsumerKey | None = None) -> tuple[CallFacts, Route]:
    """A chat call as the Forwarder has it when it asks admission."""
    route = resolve(cfg.upstreams["openai"], "POST", "v1/chat/completions")
    assert route.parser is not None
    doc: dict[str, Any] = {"model": "cap-model", "messages": MSGS}
    if max_tokens is not None:
        doc["max_tokens"] = max_tokens
    body = json.dumps(doc).encode()
    facts = CallFacts(call_id, 0.0, 0.0, "openai", "openai", route.operation, "POST",
                      "/openai/v1/chat/completions", parser=route.parser, request_body=body,
                      tags={"agent": agent}, key=key)
    facts.request_doc = doc
    facts.request_info = DIALECTS[route.parser].request_info(doc)
    return facts, route


def input_estimate(estimator: Estimator) -> int:
    return estimator.input(DIALECTS["openai.chat"], {"model": "cap-model", "messages": MSGS},
                           "cap-model").tokens


def used(call_id: str, tokens_in: int, tokens_out: int, cost: str, outcome: str = "ok",
         status: int | None = 200) -> Any:
    return make_record(call_id=call_id, agent="bot", model="cap-model",
                       request_model="cap-model", input_tokens=tokens_in,
                       output_tokens=tokens_out, total_tokens=tokens_in + tokens_out,
                       cost_usd=Decimal(cost), outcome=outcome, status_code=status)


def rates(*limits: RateLimitConfig, clock: Clock) -> RateCheck:
    return RateCheck(limits, clock=clock)


@asynccontextmanager
async def fleet(pg_url: str, cfg: Config, check: RateCheck, clock: Clock,
                estimator: Estimator, budgets: Sequence[BudgetConfig] = ()
                ) -> AsyncIterator[tuple[BudgetLedger, Admission]]:
    """Rate limits and budgets on PostgreSQL's fleet tables, decided by one Admission."""
    async with open_budgets("postgresql", pg_url, budgets) as b:
        assert b.backend.fleet is not None
        check.open(FleetRates(b.backend.fleet, clock))
        yield b, Admission((check, b.check), PriceBook(cfg.prices), estimator)


async def test_requests_per_minute_admits_what_fits_and_says_when_to_retry(
        tmp_path: Path, estimator: Estimator) -> None:
    cfg, clock = config(tmp_path), Clock()
    check = rates(RateLimitConfig("bot-rpm", {"agent": "bot"}, requests_per_minute=3),
                  clock=clock)
    admission = Admission((check,), PriceBook(cfg.prices), estimator)
    assert admission.active
    for i, t in enumerate((1000.0, 1010.0, 1020.0)):
        clock.t = t
        denied, view = await admission.decide(*call(cfg, f"c{i}"))
        assert denied is None
        # admitted: the newest admission is this one, a full reset is a minute away
        assert view == RateView(Dim(3, 2 - i, 60.0), None)
    clock.t = 1030.5
    denied = await admission.admit(*call(cfg, "c3"))
    assert isinstance(denied, Denied) and denied.check == "rate" and denied.name == "bot-rpm"
    # the oldest admission (t=1000) leaves the window at 1060: 29.5 s from now
    assert denied.retry_after_ms == 29_500 and denied.retry_after_seconds == 30
    assert "'bot-rpm'" in denied.message and "requests per minute" in denied.message
    # the refusal's figures: none left, full reset when the newest (t=1020) ages out
    assert denied.view == RateView(Dim(3, 0, 49.5), None)
    # a refused call took nothing: at 1060 exactly the first has aged out and one fits
    clock.t = 1060.0
    assert await admission.admit(*call(cfg, "c4")) is None
    assert isinstance(await admission.admit(*call(cfg, "c5")), Denied)
    # another agent's calls are not this limit's business
    assert await admission.admit(*call(cfg, "o1", agent="other")) is None


async def test_tokens_per_minute_reserves_input_plus_max_tokens_then_settles_to_usage(
        tmp_path: Path, estimator: Estimator) -> None:
    cfg, clock = config(tmp_path), Clock()
    est = input_estimate(estimator)
    reserve = est + 1000  # the input estimate plus max_tokens
    limit = 2 * reserve + 200
    check = rates(RateLimitConfig("bot-tpm", {"agent": "bot"}, tokens_per_minute=limit),
                  clock=clock)
    admission = Admission((check,), PriceBook(cfg.prices), estimator)
    assert await admission.admit(*call(cfg, "c1")) is None
    clock.t = 1005.0
    denied, view = await admission.decide(*call(cfg, "c2"))
    assert denied is None and view.tokens == Dim(limit, 200, 60.0)
    clock.t = 1010.0
    denied = await admission.admit(*call(cfg, "c3"))  # 3 * reserve > limit
    assert isinstance(denied, Denied) and "tokens per minute" in denied.message
    # c1 (t=1000) ageing out frees enough: 50 s from now
    assert denied.retry_after_ms == 50_000
    # c1 used 12 in + 100 out: its 112 tokens count from now on, not its reservation
    check.settle(used("c1", 12, 100, "0.0001"))
    assert check.snapshot()[0]["tokens"] == 112 + reserve
    assert await admission.admit(*call(cfg, "c3")) is None  # 112 + 2 * reserve fits
    # and a call that sets no max_tokens reserves its input estimate alone
    check2 = rates(RateLimitConfig("in-only", {}, tokens_per_minute=est), clock=clock)
    alone = Admission((check2,), PriceBook(cfg.prices), estimator)
    assert await alone.admit(*call(cfg, "n1", max_tokens=None)) is None
    assert check2.snapshot()[0]["tokens"] == est
    assert isinstance(await alone.admit(*call(cfg, "n2", max_tokens=None)), Denied)


async def test_a_call_larger_than_the_whole_window_is_refused_for_good(
        tmp_path: Path, estimator: Estimator) -> None:
    cfg, clock = config(tmp_path), Clock()
    check = rates(RateLimitConfig("small", {}, tokens_per_minute=500), clock=clock)
    denied = await Admission((check,), PriceBook(cfg.prices), estimator).admit(
        *call(cfg, "c1", max_tokens=1000))
    assert isinstance(denied, Denied) and "can never admit" in denied.message
    assert denied.retry_after_seconds == 60  # the window: all that can be said


async def test_dollars_per_hour_and_the_longest_wait_among_limits(
        tmp_path: Path, estimator: Estimator) -> None:
    cfg, clock = config(tmp_path), Clock()
    # worst case $0.001 a call: $0.0025 an hour holds two; 10 requests a minute holds more
    check = rates(RateLimitConfig("hourly", {}, usd_per_hour=0.0025),
                  RateLimitConfig("rpm", {}, requests_per_minute=10), clock=clock)
    admission = Admission((check,), PriceBook(cfg.prices), estimator)
    assert await admission.admit(*call(cfg, "c1")) is None
    clock.t = 1100.0
    assert await admission.admit(*call(cfg, "c2")) is None
    clock.t = 1200.0
    denied = await admission.admit(*call(cfg, "c3"))
    assert isinstance(denied, Denied) and denied.name == "hourly"
    # c1 (t=1000) leaves the hour at 4600: 3400 s from now
    assert denied.retry_after_seconds == 3400 and "USD per hour" in denied.message
    check.settle(used("c1", 12, 200, "0.0002"))  # c1 cost $0.0002: 0.0002 + 0.001 + 0.001
    assert await admission.admit(*call(cfg, "c3")) is None


async def test_a_call_refused_by_a_later_check_leaves_the_log(
        tmp_path: Path, estimator: Estimator) -> None:
    cfg, clock = config(tmp_path), Clock()
    check = rates(RateLimitConfig("one", {}, requests_per_minute=1), clock=clock)
    async with open_budgets("sqlite", str(tmp_path / "l.db"),
                            [budget("none-left", 0.0001, {"agent": "bot"})]) as b:
        admission = Admission((check, b.check), PriceBook(cfg.prices), estimator)
        denied = await admission.admit(*call(cfg, "c1"))
        assert isinstance(denied, Denied) and denied.name == "none-left"
        assert check.snapshot()[0]["requests"] == 1  # held until the record says
        check.settle(used("c1", 0, 0, "0", outcome="rejected", status=429))
        assert check.snapshot()[0]["requests"] == 0
    # an admitted call that was never answered keeps its request but used no tokens
    assert await Admission((check,), PriceBook(cfg.prices), estimator).admit(
        *call(cfg, "c2", agent="other")) is None
    check.settle(used("c2", 50, 0, "0.1", outcome="unreachable", status=None))
    assert check.snapshot()[0]["requests"] == 1 and check.snapshot()[0]["tokens"] == 0


async def test_a_consumer_keys_own_limits_act_as_key_id(
        tmp_path: Path, estimator: Estimator) -> None:
    cfg, clock = config(tmp_path), Clock()
    k1 = ConsumerKey("k1", "team-a", limits=KeyLimits(requests_per_minute=1))
    k2 = ConsumerKey("k2", "team-b", limits=KeyLimits(requests_per_minute=1))
    # a config limit can name a key too (`match: {key: <id>}`)
    check = rates(RateLimitConfig("k2-tokens", {"key": "k2"}, tokens_per_minute=10),
                  clock=clock)
    admission = Admission((check,), PriceBook(cfg.prices), estimator)
    assert await admission.admit(*call(cfg, "a1", key=k1)) is None
    denied = await admission.admit(*call(cfg, "a2", key=k1))
    assert isinstance(denied, Denied) and denied.name == "key:k1"
    denied = await admission.admit(*call(cfg, "b1", key=k2))
    assert isinstance(denied, Denied) and denied.name == "k2-tokens"
    assert await admission.admit(*call(cfg, "n1")) is None  # no key, no key limit
    # a key without limits is never held
    free = ConsumerKey("k3", "team-c")
    for i in range(5):
        assert await admission.admit(*call(cfg, f"f{i}", key=free)) is None
    # k2's own limit had room, but the call was refused as a whole: nothing held there
    assert [(s["name"], s["requests"]) for s in check.snapshot()] == \
        [("k2-tokens", 0), ("key:k1", 1), ("key:k2", 0)]


async def test_fleet_rates_and_budgets_are_decided_in_one_call(
        pg_url: str, tmp_path: Path, estimator: Estimator) -> None:
    cfg, clock = config(tmp_path), Clock()
    est = input_estimate(estimator)
    check = rates(RateLimitConfig("rpm2", {"agent": "bot"}, requests_per_minute=2,
                                  tokens_per_minute=10 * (est + 1000)), clock=clock)
    async with fleet(pg_url, cfg, check, clock, estimator,
                     [budget("cap", 0.0025, {"agent": "bot"})]) as (b, admission):
        db = await asyncpg.connect(pg_url)
        try:
            denied, view = await admission.decide(*call(cfg, "c1"))
            assert denied is None and view.requests == Dim(2, 1, 60.0)
            assert view.tokens == Dim(10 * (est + 1000), 9 * (est + 1000), 60.0)
            assert await admission.admit(*call(cfg, "c2")) is None
            assert await db.fetchval("SELECT count(*) FROM tb_rate_event") == 2
            assert await db.fetchval("SELECT count(*) FROM tb_reservation") == 2
            denied = await admission.admit(*call(cfg, "c3"))
            assert isinstance(denied, Denied) and denied.name == "rpm2"
            # the fleet's wait: the first admission ages out within the minute
            assert denied.retry_after_seconds is not None \
                and 55 <= denied.retry_after_seconds <= 60
            # refused by the rate limit: no budget reservation either
            assert await db.fetchval(
                "SELECT count(*) FROM tb_reservation WHERE call_id = 'c3'") == 0
            # a row written settles its call's reservation to the tokens it used
            await b.write([used("c1", 12, 100, "0.0001")])
            assert await db.fetchval(
                "SELECT tokens FROM tb_rate_event WHERE call_id = 'c1'") == 112
            # a refused call's row takes it out of the log (it was never admitted)
            await b.write([used("c2", 0, 0, "0", outcome="rejected", status=429)])
            assert await db.fetchval(
                "SELECT count(*) FROM tb_rate_event WHERE call_id = 'c2'") == 0
            # a budget's refusal leaves no rate event: spend $0.0001, c4 and c5 hold
            # $0.001 each, c6 would make $0.0031 > $0.0025 (the minute emptied by hand
            # between them, so only the budget can refuse)
            for cid in ("c4", "c5"):
                await db.execute("DELETE FROM tb_rate_event")
                assert await admission.admit(*call(cfg, cid)) is None
            await db.execute("DELETE FROM tb_rate_event")
            denied = await admission.admit(*call(cfg, "c6"))
            assert isinstance(denied, Denied) and denied.name == "cap"
            assert await db.fetchval("SELECT count(*) FROM tb_rate_event") == 0
            await db.execute("DELETE FROM tb_reservation")
            # with no budget check at all the rate limit is its own round trip
            only = Admission((check, BudgetCheck([])), PriceBook(cfg.prices), estimator)
            assert await only.admit(*call(cfg, "d1")) is None
            assert await only.admit(*call(cfg, "d2")) is None
            assert isinstance(await only.admit(*call(cfg, "d3")), Denied)
            assert await db.fetchval("SELECT count(*) FROM tb_rate_event") == 2
            # the API's figures are the fleet's: what the database holds
            (shown,) = await check.report()
            assert (shown["name"], shown["requests"], shown["tokens"]) == \
                ("rpm2", 2, 2 * (est + 1000))
        finally:
            await db.close()


async def test_fleet_rates_decide_on_this_replicas_log_while_the_database_is_away(
        pg_url: str, pg_server: Any, tmp_path: Path,
        estimator: Estimator) -> None:
    cfg, clock = config(tmp_path), Clock()
    check = rates(RateLimitConfig("rpm2", {}, requests_per_minute=2), clock=clock)
    async with fleet(pg_url, cfg, check, clock, estimator) as (_, admission):
        assert await admission.admit(*call(cfg, "c1")) is None  # in the fleet's log
        pg_server.stop()
        try:
            assert await admission.admit(*call(cfg, "c2")) is None  # this replica's log
            denied = await admission.admit(*call(cfg, "c3"))
            assert isinstance(denied, Denied) and denied.name == "rpm2"
        finally:
            pg_server.start()


async def test_a_fleet_replicas_own_copy_of_the_log_keeps_only_the_window(
        pg_url: str, tmp_path: Path, estimator: Estimator) -> None:
    """The copy a replica keeps for a decision while the database is away forgets what
    has left the window, though the fleet decides every call."""
    cfg, clock = config(tmp_path), Clock()
    check = rates(RateLimitConfig("rpm", {}, requests_per_minute=1000), clock=clock)
    async with fleet(pg_url, cfg, check, clock, estimator) as (_, admission):
        for i in range(3):
            assert await admission.admit(*call(cfg, f"c{i}")) is None
        (log,) = check.logs
        assert len(log.minute) == len(log.by_call) == 3
        clock.t += 61  # a minute later here (the fleet's own clock decides there)
        assert await admission.admit(*call(cfg, "late")) is None
        assert [e.call_id for e in log.minute] == ["late"] and list(log.by_call) == ["late"]


async def test_a_restart_on_sqlite_restores_the_windows_from_the_ledger(
        tmp_path: Path, estimator: Estimator) -> None:
    """The log lives in the process: a restart reads the last minute's (hour's) admitted
    calls back from the ledger, so the limit holds across it."""
    cfg, clock = config(tmp_path), Clock()
    now = time.time()

    def row(call_id: str, ago: float, tokens: int, cost: str, outcome: str = "ok",
            agent: str = "bot") -> Any:
        at = iso_utc(now - ago)
        return make_record(call_id=call_id, agent=agent, model="cap-model",
                           request_model="cap-model", started_at=at, ended_at=at,
                           input_tokens=tokens, output_tokens=0, total_tokens=tokens,
                           cost_usd=Decimal(cost), outcome=outcome,
                           status_code=429 if outcome == "rejected" else 200)

    backend = open_backend(str(tmp_path / "ledger.db"))
    await backend.open()
    try:
        await backend.write([r.to_row() for r in (
            row("old", 70, 500, "0.5"),  # out of the minute, in the hour
            row("a", 20, 100, "0.25"), row("b", 10, 200, "0.25"),
            row("refused", 5, 0, "0", outcome="rejected"),  # never admitted
            row("other", 5, 900, "0.9", agent="other"))])  # another agent's
        check = rates(RateLimitConfig("rpm", {"agent": "bot"}, requests_per_minute=2,
                                      tokens_per_minute=10_000),
                      RateLimitConfig("hourly", {"agent": "bot", "model": "cap-model"},
                                      usd_per_hour=1.0), clock=clock)
        await check.restore(backend)
    finally:
        await backend.aclose()
    assert [(s["name"], s["requests"], s["tokens"], s["usd_hour"]) for s in check.snapshot()] \
        == [("rpm", 2, 300, 0.0), ("hourly", 2, 300, 1.0)]  # the minute's; the hour's dollars
    denied = await Admission((check,), PriceBook(cfg.prices), estimator).admit(
        *call(cfg, "c1"))
    assert isinstance(denied, Denied) and denied.name == "hourly"  # $1.00 of $1.00 spent
    # "a" (20 s ago) leaves the minute in 40 s, "old" leaves the hour in 3530 s: the wait
    # is the longest
    assert denied.retry_after_seconds is not None and 3529 <= denied.retry_after_seconds <= 3531


async def test_a_limit_matching_a_consumer_key_is_restored_from_its_rows(
        tmp_path: Path) -> None:
    """Rows name the consumer key they were made with (`consumer_key`): a limit matching
    `key` reads back that key's calls, not a tag that happens to be called `key`."""
    now = time.time()

    def row(call_id: str, key: str, tags: dict[str, str] | None = None) -> Any:
        at = iso_utc(now - 10)
        return make_record(call_id=call_id, consumer_key=key, tags=tags or {},
                           started_at=at, ended_at=at, total_tokens=100)

    backend = open_backend(str(tmp_path / "ledger.db"))
    await backend.open()
    try:
        await backend.write([r.to_row() for r in (
            row("a1", "key_a"), row("a2", "key_a"),
            row("b1", "key_b", {"key": "key_a"}))])  # another key's, tagged key=key_a
        check = rates(RateLimitConfig("per-key", {"key": "key_a"}, requests_per_minute=2),
                      clock=Clock())
        await check.restore(backend)
    finally:
        await backend.aclose()
    assert [(s["name"], s["requests"]) for s in check.snapshot()] == [("per-key", 2)]
