"""Admission decides before forwarding: a blocking budget admits what fits (its worst case
reserved until the call's record settles it) and refuses the rest, on the in-process store
(SQLite) and in the fleet's ledger (PostgreSQL) alike; the first refusal in the list of
checks is the decision; the worst case is estimated only when a check needs it; and on a
shared ledger that is away, a budget keeps counting on this replica's view or, with
`on_ledger_down: refuse`, fails closed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import state
from proxy.admission import Admission, Denied
from proxy.admission.base import Ask
from proxy.admission.budgets import BudgetCheck, LocalBudgets, window_bounds
from proxy.admission.rates import RateCheck
from proxy.config import BudgetConfig, BudgetWindow, Config
from proxy.dialects import DIALECTS
from proxy.estimate import Estimator
from proxy.keys import ConsumerKey, KeyLimits
from proxy.pricing import PriceBook
from proxy.record import CallFacts
from proxy.routing import Route, resolve
from tests.budget_stores import budget, ledger_target, open_budgets
from tests.conftest import FakeUpstream, Proxy, Reply, StartProxy, make_config, wait_until
from tests.factories import make_record
from tests.test_fleet import until

# cap-model: input free, $1.00 per million output tokens. A call asking max_tokens=1000 has
# a worst case of 1000 * $1 / 1e6 = $0.001, whatever its input.
PRICES = {"models": {"cap-model": {"input": 0, "output": 1.0}}}
WORST = Decimal("0.001")
CHAT = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "cap-model",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 1000}}).encode()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    return ledger_target(request, tmp_path)


def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, "http://127.0.0.1:9", pricing=PRICES)


def call(cfg: Config, call_id: str, agent: str = "bot", model: str = "cap-model",
         max_tokens: int = 1000) -> tuple[CallFacts, Route]:
    """A chat call as the Forwarder has it when it asks admission."""
    route = resolve(cfg.upstreams["openai"], "POST", "v1/chat/completions")
    assert route.parser is not None
    body = json.dumps({"model": model, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    facts = CallFacts(call_id, 0.0, 0.0, "openai", "openai", route.operation, "POST",
                      "/openai/v1/chat/completions", parser=route.parser, request_body=body,
                      tags={"agent": agent})
    facts.request_doc = json.loads(body)
    facts.request_info = DIALECTS[route.parser].request_info(facts.request_doc)
    return facts, route


def settled(call_id: str, cost: str, agent: str = "bot") -> Any:
    """The record of a finished cap-model call, started now (in today's window)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return make_record(call_id=call_id, agent=agent, model="cap-model",
                       request_model="cap-model", response_model="cap-model",
                       cost_usd=Decimal(cost), started_at=now, ended_at=now)


def test_windows_are_utc_calendar_windows() -> None:
    now = datetime(2026, 12, 3, 10, 4, 25, tzinfo=UTC)  # a Thursday
    assert window_bounds("day", now) == (datetime(2026, 12, 3, tzinfo=UTC),
                                         datetime(2026, 12, 4, tzinfo=UTC))
    assert window_bounds("week", now) == (datetime(2026, 11, 30, tzinfo=UTC),  # Monday
                                          datetime(2026, 12, 7, tzinfo=UTC))
    assert window_bounds("month", now) == (datetime(2026, 12, 1, tzinfo=UTC),
                                           datetime(2027, 1, 1, tzinfo=UTC))
    assert window_bounds("total", now) == (None, None)


async def test_a_blocking_budget_admits_what_fits_and_refuses_the_rest(
        ledger: tuple[str, str], tmp_path: Path, estimator: Estimator) -> None:
    cfg = config(tmp_path)
    # $0.0025 holds two worst cases ($0.002); a third would make $0.003
    async with open_budgets(*ledger, [budget("cap", 0.0025, {"agent": "bot"})]) as b:
        admission = Admission((b.check,), PriceBook(cfg.prices), estimator)
        assert admission.active
        assert await admission.admit(*call(cfg, "c1")) is None
        assert await admission.admit(*call(cfg, "c2")) is None
        await b.sync()
        assert b.reserved("cap") == 2 * WORST
        before = datetime.now(UTC)
        denied = await admission.admit(*call(cfg, "c3"))
        after = datetime.now(UTC)
        assert isinstance(denied, Denied)
        assert (denied.name, denied.limit_usd, denied.ledger_down) == ("cap", 0.0025, False)
        # retry when the day ends: the seconds to the next UTC midnight, plus one
        midnight = before.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(1)
        assert denied.retry_after_seconds is not None
        assert int((midnight - after).total_seconds()) + 1 <= denied.retry_after_seconds \
            <= int((midnight - before).total_seconds()) + 1
        assert "(limit $0.0025) is exhausted" in denied.message
        # c1 ends having cost $0.0002 (200 tokens out): its $0.001 reservation goes, its
        # cost stays: 0.0002 + 0.001 (c2) + 0.001 (c3) = $0.0022 fits
        b.check.settle(settled("c1", "0.0002"))
        await b.write([settled("c1", "0.0002")])
        assert b.reserved("cap") == WORST
        assert await admission.admit(*call(cfg, "c3")) is None
        # 0.0002 + 0.002 held + 0.001 = $0.0032 does not
        assert isinstance(await admission.admit(*call(cfg, "c4")), Denied)
        # a call of another agent is not this budget's business
        assert await admission.admit(*call(cfg, "o1", agent="other")) is None


async def test_a_budget_checks_only_the_calls_it_matches(
        ledger: tuple[str, str], tmp_path: Path, estimator: Estimator) -> None:
    cfg = config(tmp_path)
    # limit 0 refuses every call it matches (spend 0 >= limit 0)
    configs = [budget("bot-on-cap", 0, {"agent": "bot", "model": "cap-model"}),
               budget("other-on-gemini", 0, {"agent": "other", "upstream": "gemini"}),
               budget("watch", 0, {}, action="alert")]

    def gemini(call_id: str, agent: str) -> tuple[CallFacts, Route]:
        route = resolve(cfg.upstreams["gemini"], "POST",
                        "v1beta/models/cap-model:generateContent")
        return CallFacts(call_id, 0.0, 0.0, "gemini", "gemini", route.operation, "POST",
                         "/gemini/v1beta/models/cap-model:generateContent",
                         parser=route.parser, tags={"agent": agent}), route

    async with open_budgets(*ledger, configs) as b:
        admission = Admission((b.check,), PriceBook(cfg.prices), estimator)

        async def refused_by(facts: CallFacts, route: Route) -> str | None:
            denied = await admission.admit(facts, route)
            return None if denied is None else denied.name
        assert await refused_by(*call(cfg, "c1")) == "bot-on-cap"
        assert await refused_by(*call(cfg, "c2", agent="other")) is None  # not on gemini
        assert await refused_by(*call(cfg, "c3", model="gpt-4o")) is None
        # the model a Gemini URL names is the call's model
        assert await refused_by(*gemini("c4", "bot")) == "bot-on-cap"
        assert await refused_by(*gemini("c5", "other")) == "other-on-gemini"
        assert await refused_by(*gemini("c6", "third")) is None


async def test_alert_budgets_never_refuse(tmp_path: Path, estimator: Estimator) -> None:
    cfg = config(tmp_path)
    check = BudgetCheck([budget("watch", 0, {}, action="alert")])
    admission = Admission((check,), PriceBook(cfg.prices), estimator)
    assert not admission.active  # the Forwarder does not even ask
    assert await admission.admit(*call(cfg, "c1")) is None


async def test_the_first_refusal_is_the_decision(tmp_path: Path, estimator: Estimator) -> None:
    cfg = config(tmp_path)
    roomy = BudgetCheck([budget("roomy", 1, {"agent": "bot"})])
    full = BudgetCheck([budget("full", 0, {"agent": "bot"})])
    prices = PriceBook(cfg.prices)
    # the refusing check first: the next one is not asked (holds nothing for the call)
    denied = await Admission((full, roomy), prices, estimator).admit(*call(cfg, "c1"))
    assert denied is not None and denied.name == "full"
    assert roomy.store.reserved_usd(roomy.windows[0]) == 0
    # the other way round: the roomy check held the worst case, the refusal still decides,
    # and the refused call's record releases what the roomy check held
    denied = await Admission((roomy, full), prices, estimator).admit(*call(cfg, "c2"))
    assert denied is not None and denied.name == "full"
    assert roomy.store.reserved_usd(roomy.windows[0]) == WORST
    roomy.settle(make_record(call_id="c2", agent="bot", status_code=429, outcome="rejected",
                             cost_usd=None))
    assert roomy.store.reserved_usd(roomy.windows[0]) == 0
    assert roomy.windows[0].spend == 0  # a refused call costs nothing


async def test_the_worst_case_is_estimated_once_and_only_when_a_check_needs_it() -> None:
    estimates: list[str] = []

    async def worst() -> Decimal:
        estimates.append("estimated")
        return WORST

    checks = [BudgetCheck([budget("a", 1, {"agent": "bot"})]),
              BudgetCheck([budget("b", 1, {"agent": "bot"})])]
    for c in checks:
        await c.open(LocalBudgets())
    other = Ask("c1", {"agent": "other", "upstream": "openai"}, worst)
    assert [await c.check(other) for c in checks] == [None, None]
    assert estimates == []  # no budget matched: nothing to estimate
    bot = Ask("c2", {"agent": "bot", "upstream": "openai"}, worst)
    assert [await c.check(bot) for c in checks] == [None, None]
    assert estimates == ["estimated"]  # two checks, one estimate
    assert [c.windows[0].reserved for c in checks] == [{"c2": WORST}] * 2


async def test_what_is_held_stays_the_sum_of_the_reservations_in_flight() -> None:
    """The held total is kept as calls come and go (not summed per call): with 300 calls in
    flight, settled out of order, every decision and the gauge read the exact sum."""
    check = BudgetCheck([budget("cap", 0.3, {"agent": "bot"})])
    store = LocalBudgets()
    await check.open(store)
    w = check.windows[0]

    async def worst() -> Decimal:
        return WORST

    for i in range(300):  # 300 * $0.001 = $0.3: exactly the limit, admitted
        assert await check.check(Ask(f"c{i}", {"agent": "bot"}, worst)) is None
    assert store.reserved_usd(w) == 300 * WORST == Decimal("0.3")
    # one more would hold $0.301 > $0.3
    assert isinstance(await check.check(Ask("late", {"agent": "bot"}, worst)), Denied)
    for i in [*range(1, 300, 2), *range(0, 300, 2)][:299]:  # all but c298, out of order
        check.settle(settled(f"c{i}", "0"))
    assert w.reserved == {"c298": WORST}
    assert store.reserved_usd(w) == WORST  # 0.3 - 299 * 0.001
    check.settle(settled("c298", "0.0005"))
    assert store.reserved_usd(w) == 0 and w.reserved == {}
    assert w.spend == Decimal("0.0005")
    # $0.0005 spent: 299 worst cases fit (0.2995), a 300th would make 0.3005
    for i in range(299):
        assert await check.check(Ask(f"d{i}", {"agent": "bot"}, worst)) is None
    assert isinstance(await check.check(Ask("d299", {"agent": "bot"}, worst)), Denied)


async def test_spend_so_far_is_restored_from_the_ledger(
        ledger: tuple[str, str], tmp_path: Path, estimator: Estimator) -> None:
    cfg = config(tmp_path)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    before = [settled("r1", "0.0012"), settled("r2", "0.0008"),
              settled("r3", "0.5", agent="other"),
              make_record(call_id="r4", agent="bot", model="cap-model",
                          cost_usd=Decimal("0.5"), started_at=yesterday)]
    async with open_budgets(*ledger, [budget("cap", 0.0025, {"agent": "bot"})],
                            before=before) as b:
        # today, for bot: 0.0012 + 0.0008 = $0.002 (other agents and yesterday aside)
        assert b.check.windows[0].spend == Decimal("0.002")
        admission = Admission((b.check,), PriceBook(cfg.prices), estimator)
        denied = await admission.admit(*call(cfg, "c1"))  # 0.002 + 0.001 > 0.0025
        assert denied is not None and denied.name == "cap"
        assert await admission.admit(*call(cfg, "c2", max_tokens=400)) is None  # + 0.0004


async def chat(s: aiohttp.ClientSession, base: str, agent: str = "bot"
               ) -> tuple[int, dict[str, Any]]:
    async with s.post(f"{base}/openai/v1/chat/completions", headers={"X-Meter-Agent": agent},
                      json={"model": "cap-model", "max_tokens": 1000,
                            "messages": [{"role": "user", "content": "hi"}]}) as r:
        return r.status, await r.json()


async def on_postgres(upstream: FakeUpstream, start_proxy: StartProxy, pg_url: str,
                      budgets: list[dict[str, Any]]) -> Proxy:
    """A proxy with `budgets` on a PostgreSQL ledger, its upstream answering chat calls."""
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    return await start_proxy(ledger={"url": pg_url, "flush_seconds": 0.02}, pricing=PRICES,
                             budgets=budgets)


async def test_a_blocking_budget_keeps_counting_while_postgres_is_away(
        upstream: FakeUpstream, start_proxy: StartProxy, pg_server: Any, pg_url: str) -> None:
    # $0.0095 fits 9 calls: 9 * $0.001 = $0.009; a 10th would make $0.010 > $0.0095
    proxy = await on_postgres(
        upstream, start_proxy, pg_url,
        [{"name": "cap", "match": {"agent": "bot"}, "limit_usd": 0.0095,
          "window": "day", "action": "block"}])
    ledger = proxy.app[state.LEDGER]
    async with aiohttp.ClientSession() as s:
        pg_server.stop()
        try:
            statuses = [(await chat(s, proxy.url))[0] for _ in range(30)]
            assert statuses == [200] * 9 + [429] * 21
            assert len(upstream.requests) == 9
        finally:
            pg_server.start()
        # back: the nine rows are replayed and charged once; the fleet's spend is theirs
        # and the cap still holds
        await proxy.collector.wait_for(30)
        await wait_until(lambda: ledger.stuck_rows == 0)

        async def fleet_spend() -> bool:
            async with s.get(f"{proxy.url}/api/budgets") as r:
                (b,) = (await r.json())["budgets"]
            return abs(b["spend_usd"] - 0.009) < 1e-9
        await until(fleet_spend)
        status, body = await chat(s, proxy.url)
        assert status == 429 and body["error"]["code"] == "budget_exceeded"
    assert len(upstream.requests) == 9


async def test_a_refusing_budget_fails_closed_while_postgres_is_away(
        upstream: FakeUpstream, start_proxy: StartProxy, pg_server: Any, pg_url: str) -> None:
    proxy = await on_postgres(
        upstream, start_proxy, pg_url,
        [{"name": "strict", "match": {"agent": "bot"}, "limit_usd": 1,
          "window": "day", "action": "block", "on_ledger_down": "refuse"},
         {"name": "lenient", "match": {"agent": "other"}, "limit_usd": 1,
          "window": "day", "action": "block"}])
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, proxy.url))[0] == 200
        pg_server.stop()
        try:
            status, body = await chat(s, proxy.url)
            assert status == 503
            assert body["error"]["code"] == "budget_unavailable"
            assert body["error"]["budget"] == "strict"
            assert "on_ledger_down: refuse" in body["error"]["message"]
            assert (await chat(s, proxy.url, agent="other"))[0] == 200  # `local` decides
            assert len(upstream.requests) == 2
        finally:
            pg_server.start()

        async def admitted() -> bool:
            return (await chat(s, proxy.url))[0] == 200
        await until(admitted)
    records = await proxy.collector.wait_for(len(upstream.requests) + 1)
    refused = [r for r in records if r.status_code == 503]
    assert refused and all(r.outcome == "rejected" for r in refused)


# --- layered budgets (issue 20) ---

def layered(name: str, match: dict[str, str], *windows: BudgetWindow) -> BudgetConfig:
    first = windows[0]
    return BudgetConfig(name, match, first.limit_usd, first.window, first.action,
                        windows=windows, layered=True)


async def test_a_layered_budget_day_blocks_while_month_alerts(
        ledger: tuple[str, str]) -> None:
    """Day: block at $0.003; month: alert at $0.002. Three calls of worst case $0.001 fit
    the day (0.003 <= 0.003), the fourth is refused by the day window; the month window,
    over its limit ($0.003 > $0.002), refuses nothing and holds nothing."""
    team = layered("team", {"agent": "bot"}, BudgetWindow("day", 0.003, "block"),
                   BudgetWindow("month", 0.002, "alert"))

    async def worst() -> Decimal:
        return WORST

    async with open_budgets(*ledger, [team]) as b:
        day, month = b.check.windows
        assert (day.cfg.name, month.cfg.name) == ("team:day", "team:month")
        for i in range(3):
            assert await b.check.check(Ask(f"c{i}", {"agent": "bot"}, worst)) is None
        await b.sync()
        assert b.reserved("team:day") == Decimal("0.003") and b.reserved("team:month") == 0
        denied = await b.check.check(Ask("c3", {"agent": "bot"}, worst))
        assert isinstance(denied, Denied) and denied.name == "team:day"
        midnight = window_bounds("day", datetime.now(UTC))[1]
        assert midnight is not None and denied.retry_after_seconds is not None
        left = (midnight - datetime.now(UTC)).total_seconds()
        assert left - 2 <= denied.retry_after_seconds <= left + 2
        records = [settled(f"c{i}", "0.001") for i in range(3)]
        for r in records:
            b.check.settle(r)
        await b.write(records)
        assert (day.local_spend(), month.local_spend()) == (Decimal("0.003"),) * 2
        assert b.reserved("team:day") == 0
        assert month.state() == "exceeded"  # alerted, never refused
    async with open_budgets(*ledger, [team]) as b:  # restored per window from the ledger
        assert [w.spend for w in b.check.windows] == [Decimal("0.003")] * 2
        denied = await b.check.check(Ask("c4", {"agent": "bot"}, worst))
        assert isinstance(denied, Denied) and denied.name == "team:day"


async def test_a_rolling_window_counts_the_current_hour_and_the_ones_before(
        ledger: tuple[str, str]) -> None:
    """rolling, hours: 3 = the current clock hour and the two before it. Rows one and two
    hours ago count ($0.004 + $0.002), one three hours ago does not ($0.5)."""
    now = datetime.now(UTC)

    def ago(hours: int, call_id: str, cost: str) -> Any:
        t = (now - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return make_record(call_id=call_id, agent="bot", model="cap-model",
                           cost_usd=Decimal(cost), started_at=t, ended_at=t)

    roll = layered("burst", {"agent": "bot"}, BudgetWindow("rolling", 0.01, "block", hours=3))
    before = [ago(1, "h1", "0.004"), ago(2, "h2", "0.002"), ago(3, "h3", "0.5")]

    async def worst() -> Decimal:
        return Decimal("0.004")

    async with open_budgets(*ledger, [roll], before=before) as b:
        (w,) = b.check.windows
        assert w.cfg.name == "burst:rolling_3h"
        assert w.spend == Decimal("0.006")
        assert await b.check.check(Ask("c1", {"agent": "bot"}, worst)) is None  # 0.010
        denied = await b.check.check(Ask("c2", {"agent": "bot"}, worst))
        assert isinstance(denied, Denied) and denied.name == "burst:rolling_3h"
        # Retry-After: the next hour boundary, when the oldest hour ages out
        hour_end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        left = (hour_end - datetime.now(UTC)).total_seconds()
        assert denied.retry_after_seconds is not None
        assert left - 2 <= denied.retry_after_seconds <= left + 2
        record = settled("c1", "0.001")
        b.check.settle(record)
        await b.write([record])
        assert w.local_spend() == Decimal("0.007")
        # an hour on, the window starts one hour later: the $0.002 two hours ago is out
        later = hour_end + timedelta(minutes=1)
        if b.backend.fleet is None:
            w.roll(later)
            assert w.spend == Decimal("0.005")
        else:
            start = (hour_end - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            state = await b.backend.fleet.budget_state([(w.cfg.name, start)])
            assert state[w.cfg.name][0] == Decimal("0.005")


async def test_a_consumer_keys_limits_are_asked_even_with_nothing_configured(
        tmp_path: Path, estimator: Estimator) -> None:
    """No budget, no configured rate limit: admission has nothing to ask for most calls,
    but a call presenting a consumer key with limits of its own is held to them."""
    cfg = config(tmp_path)
    admission = Admission((RateCheck([]), BudgetCheck([])), PriceBook(cfg.prices), estimator)
    assert not admission.active
    plain, route = call(cfg, "p1")
    assert not admission.needed(plain)
    key = ConsumerKey("k1", "team-a", limits=KeyLimits(requests_per_minute=1))
    first, second = call(cfg, "k1-1")[0], call(cfg, "k1-2")[0]
    first.key = second.key = key
    assert admission.needed(first)
    assert await admission.admit(first, route) is None
    denied = await admission.admit(second, route)
    assert isinstance(denied, Denied) and denied.name == "key:k1"
