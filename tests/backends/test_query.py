"""Reading the ledger's parameters: times and text values a ledger query can hold."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from proxy.backends import open_backend
from proxy.backends.query import QueryError, calls_sql, parse_time, usage_sql
from tests.factories import make_record

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("value", [
    "999999999d",  # past year 1: timedelta arithmetic overflows
    "99999999999999999999w",  # past what timedelta holds at all
    "0001-01-01",  # year 1 prints as "1-01-01": no ledger key, no roll-up key
    "9999-12-31T23:59:59",  # the roll-up's next day is past year 9999
    "9999-12-31T23:59:59-05:00",  # in UTC, past year 9999
    "1969-12-31",
    "\u0663d",  # a digit that is not 0-9 (Arabic-Indic three)
])
def test_a_time_no_ledger_can_hold_is_refused_naming_the_parameter(value: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_time("since", value, NOW)
    assert info.value.param == "since" and str(info.value).startswith("since: ")


def test_the_bounds_and_ordinary_times_still_parse() -> None:
    assert parse_time("since", "7d", NOW) == "2026-11-23T12:00:00.000Z"
    assert parse_time("since", "1970-01-01", NOW) == "1970-01-01T00:00:00.000Z"
    assert parse_time("until", "9998-12-31T23:59:59Z", NOW) == "9998-12-31T23:59:59.000Z"
    sql, _ = usage_sql("sqlite", ["day"], parse_time("since", "9998-12-31T23:59:59Z", NOW),
                       None, {})
    assert "llm_usage" in sql


def test_a_nul_in_a_filter_or_call_id_is_refused_before_any_query() -> None:
    """PostgreSQL refuses NUL in text outright (which read as the ledger being down)."""
    with pytest.raises(QueryError) as info:
        usage_sql("postgresql", [], None, None, {"agent": "a\x00b"})
    assert info.value.param == "agent"
    with pytest.raises(QueryError) as info:
        calls_sql(None, None, {}, 1, "c\x00")
    assert info.value.param == "call_id"


async def test_a_rolling_budget_matching_a_consumer_key_reads_its_rows(target: str) -> None:
    """A rolling budget's spend per hour (read at start and by PostgreSQL's define_budgets)
    matches `key` on the row's consumer key, as a calendar budget's spend does, not on a
    tag that happens to be called `key`."""
    backend = open_backend(target)
    await backend.open()
    try:
        await backend.write([make_record(call_id=c, consumer_key=k, tags=t,
                                         started_at=at, ended_at=at,
                                         cost_usd=Decimal(cost)).to_row()
                             for c, k, t, at, cost in (
            ("a1", "key_a", {}, "2026-11-20T10:05:00.000Z", "0.25"),
            ("a2", "key_a", {}, "2026-11-20T11:10:00.000Z", "0.5"),
            ("b1", "key_b", {"key": "key_a"}, "2026-11-20T11:20:00.000Z", "1"))])
        since = "2026-11-20T10:00:00.000Z"
        assert await backend.spend_by_hour({"key": "key_a"}, since) == {
            "2026-11-20T10:00:00.000Z": Decimal("0.25"),
            "2026-11-20T11:00:00.000Z": Decimal("0.5")}
        assert await backend.spend({"key": "key_a"}, since) == Decimal("0.75")  # 0.25 + 0.5
    finally:
        await backend.aclose()
