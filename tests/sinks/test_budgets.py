"""The budgets sink settles each record against the budgets it matches (its reservation
released, its cost counted) on the in-process store (SQLite) and through the fleet's ledger
(PostgreSQL) alike, and serves what it knows as gauges and as `/api/budgets`. It decides
nothing and imports no backend."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.admission.base import Ask
from proxy.config import BudgetConfig, BudgetWindow
from proxy.sinks.budgets import Budgets
from tests.budget_stores import budget, ledger_target, open_budgets
from tests.factories import make_record

WORST = Decimal("0.001")


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    return ledger_target(request, tmp_path)


def today(call_id: str, cost: str | None, **kw: Any) -> Any:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return make_record(call_id=call_id, started_at=now, ended_at=now,
                       cost_usd=None if cost is None else Decimal(cost), **kw)


def by_name(sink: Budgets) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in sink.snapshot()}


async def test_a_record_releases_its_reservation_and_counts_its_cost(
        ledger: tuple[str, str]) -> None:
    configs = [budget("cap", 1, {"agent": "bot"}),
               budget("watch", 0.0005, {}, window="total", action="alert")]
    async with open_budgets(*ledger, configs) as b:
        registry = CollectorRegistry()
        sink = Budgets(b.check, registry)

        async def worst() -> Decimal:
            return WORST
        assert await b.check.check(Ask("c1", {"agent": "bot", "upstream": "openai"},
                                       worst)) is None
        await b.sync()
        assert by_name(sink)["cap"]["reserved_usd"] == 0.001
        # c1 ends costing $0.0004; c2 (no reservation: admitted before a budget existed,
        # say) costs $0.0002; a call nobody priced counts nothing
        for record in (today("c1", "0.0004", agent="bot"), today("c2", "0.0002", agent="bot"),
                       today("c3", None, agent="bot")):
            sink.observe(record)
            await b.write([record])
        snap = by_name(sink)
        assert (snap["cap"]["spend_usd"], snap["cap"]["reserved_usd"]) == (0.0006, 0.0)
        # the alert budget counts the same calls: $0.0006 against $0.0005
        assert (snap["watch"]["spend_usd"], snap["watch"]["state"]) == (0.0006, "exceeded")
        assert snap["cap"]["state"] == "ok"
        assert snap["watch"]["match"] == {} and snap["watch"]["action"] == "alert"
        scraped = {(sample.name, sample.labels["budget"]): sample.value
                   for fam in text_string_to_metric_families(
                       generate_latest(registry).decode()) for sample in fam.samples}
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0,
                                             microsecond=0) + timedelta(days=1)
        assert scraped == {
            ("tokenbooth_budget_spend_usd", "cap"): 0.0006,
            ("tokenbooth_budget_spend_usd", "watch"): 0.0006,
            ("tokenbooth_budget_limit_usd", "cap"): 1.0,
            ("tokenbooth_budget_limit_usd", "watch"): 0.0005,
            ("tokenbooth_budget_window_end_timestamp_seconds", "cap"): midnight.timestamp(),
            ("tokenbooth_budget_window_end_timestamp_seconds", "watch"): 0.0}  # total


async def test_a_record_counts_by_the_model_answered_or_the_model_asked(
        ledger: tuple[str, str]) -> None:
    async with open_budgets(*ledger, [budget("4o", 1, {"model": "gpt-4o"},
                                             action="alert")]) as b:
        sink = Budgets(b.check, CollectorRegistry())
        records = [today("asked", "0.01", model="gpt-4o-2024-08-06", request_model="gpt-4o"),
                   today("answered", "0.02", model="gpt-4o", request_model=None),
                   today("neither", "0.5", model="gpt-4o-mini", request_model="gpt-4o-mini")]
        for record in records:
            sink.observe(record)
        await b.write(records)
        assert by_name(sink)["4o"]["spend_usd"] == 0.03  # 0.01 + 0.02


async def test_the_warning_state_starts_at_eighty_percent(tmp_path: Path) -> None:
    async with open_budgets("sqlite", str(tmp_path / "l.db"),
                            [budget("b", 0.01, {}, action="alert")]) as b:
        sink = Budgets(b.check, CollectorRegistry())
        states = []
        for i, cost in enumerate(("0.0079", "0.0001", "0.002")):  # 0.0079, 0.008, 0.01
            sink.observe(today(f"c{i}", cost))
            states.append(by_name(sink)["b"]["state"])
        assert states == ["ok", "warning", "exceeded"]


def test_the_sink_imports_no_backend() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, proxy.sinks.budgets, proxy.admission; "
         "print(sorted(m for m in sys.modules if m.startswith(('proxy.backends.sqlite', "
         "'proxy.backends.postgres', 'asyncpg', 'aiosqlite'))))"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_a_layered_budget_is_a_row_and_a_gauge_series_per_window(
        ledger: tuple[str, str]) -> None:
    """/api/budgets: one entry per window (`name` the budget's, `window` its id, `key` the
    window's key); the gauges: one series per window, labelled by its key."""
    team = BudgetConfig("team", {"agent": "bot"}, 0.01, "day", "block", windows=(
        BudgetWindow("day", 0.01, "block"), BudgetWindow("rolling", 0.002, "alert", 5)),
        thresholds=(0.5,), layered=True)
    async with open_budgets(*ledger, [team]) as b:
        registry = CollectorRegistry()
        sink = Budgets(b.check, registry)
        record = today("c1", "0.0015", agent="bot")
        sink.observe(record)
        await b.write([record])
        now = datetime.now(UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        hour = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        day, rolling = sink.snapshot()
        assert {k: day[k] for k in ("name", "window", "key", "spend_usd", "limit_usd",
                                    "action", "state", "resets_at", "thresholds")} == {
            "name": "team", "window": "day", "key": "team:day", "spend_usd": 0.0015,
            "limit_usd": 0.01, "action": "block", "state": "ok",
            "resets_at": midnight.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "thresholds": [0.5]}
        # $0.0015 of $0.002: 75 %, under the default 80 % "warning"
        assert (rolling["window"], rolling["key"], rolling["spend_usd"], rolling["state"],
                rolling["resets_at"]) == ("rolling_5h", "team:rolling_5h", 0.0015, "ok",
                                          hour.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
        scraped = {(sample.name, sample.labels["budget"]): sample.value
                   for fam in text_string_to_metric_families(
                       generate_latest(registry).decode()) for sample in fam.samples}
        assert scraped == {
            ("tokenbooth_budget_spend_usd", "team:day"): 0.0015,
            ("tokenbooth_budget_spend_usd", "team:rolling_5h"): 0.0015,
            ("tokenbooth_budget_limit_usd", "team:day"): 0.01,
            ("tokenbooth_budget_limit_usd", "team:rolling_5h"): 0.002,
            ("tokenbooth_budget_window_end_timestamp_seconds", "team:day"):
                midnight.timestamp(),
            ("tokenbooth_budget_window_end_timestamp_seconds", "team:rolling_5h"):
                hour.timestamp()}
