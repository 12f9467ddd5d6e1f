"""`tokenbooth report`: totals equal the ledger; CSV and JSON parse; bad input is one clear
line."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import main
from proxy.sinks.ledger import Ledger
from tests.factories import make_record


def sql_totals(path: str, since_hours: float | None = None) -> tuple[int, int, float]:
    conn = sqlite3.connect(path)
    try:
        where, args = "", []
        if since_hours is not None:
            where = " WHERE started_at >= ?"
            args.append((datetime.now(UTC) - timedelta(hours=since_hours))
                        .strftime("%Y-%m-%dT%H:%M:%S.000Z"))
        return conn.execute(f"SELECT COUNT(*), SUM(input_tokens), SUM(cost_usd) FROM llm_usage"
                            f"{where}", args).fetchone()
    finally:
        conn.close()


async def ledger_of_now(path: str, *records: dict[str, Any]) -> None:
    """A SQLite ledger at `path` with one row per `records` entry (make_record's fields),
    each started and ended now."""
    ledger = Ledger(path, flush_seconds=0.01)
    await ledger.open()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for fields in records:
        ledger.observe(make_record(**{"started_at": now, "ended_at": now, **fields}))
    await ledger.flush()
    await ledger.aclose()


def test_report_json_totals_equal_the_ledger(ledger_db: str, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for by in ("agent", "agent,model", "session", "day", "week", "month"):
        assert main(["report", "--db", ledger_db, "--by", by, "--since", "2d",
                     "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        calls, inp, cost = sql_totals(ledger_db, 48)
        assert doc["totals"]["calls"] == calls == sum(r["calls"] for r in doc["rows"])
        assert doc["totals"]["input_tokens"] == inp
        assert doc["totals"]["cost_usd"] == pytest.approx(cost)
        assert doc["month_to_date"]["forecast_usd"] >= doc["month_to_date"]["cost_usd"]


def test_report_csv_parses_and_table_is_aligned(ledger_db: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--db", ledger_db, "--by", "agent", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["agent"] for r in rows} == {"ana", "bob"}
    assert sum(int(r["calls"]) for r in rows) == 30
    assert main(["report", "--db", ledger_db, "--by", "model"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("model") and set(lines[1]) <= {"-", " "}
    assert "TOTAL" in out and "unpriced" in out and "Month to date" in out
    assert "unpriced call(s) are not in cost_usd" in out


def test_bad_since_is_a_clear_error(ledger_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--db", ledger_db, "--since", "last tuesday"]) == 2
    err = capsys.readouterr().err
    assert "--since" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert main(["report", "--db", ledger_db, "--by", "planet"]) == 2
    assert "group_by" in capsys.readouterr().err
    assert main(["report", "--db", ledger_db, "--since", "999999999d"]) == 2  # past year 1
    err = capsys.readouterr().err
    assert "--since" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert main(["report", "--db", "/nonexistent/x.db"]) == 2


async def test_a_group_with_no_priced_usage_shows_a_dash_and_an_unpriced_call_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "u.db")
    await ledger_of_now(path, dict(call_id="u1", agent="mystery", cost_usd=None,
                                   price_source=None),
                        dict(call_id="p1", agent="paid", cost_usd=Decimal("0.01")))
    assert main(["report", "--db", path, "--by", "agent", "--since", "1d"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    assert lines["mystery"].split()[-4] == "-" and "unpriced" not in lines["mystery"]
    assert "$0.010000" in lines["paid"]
    assert main(["calls", "--db", path, "--agent", "mystery"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("unpriced")


def test_report_quota_refuses_what_does_not_apply_and_says_when_it_has_nothing(
        ledger_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--quota", "--db", ledger_db, "--by", "agent"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tokenbooth: --by: does not apply to --quota (it reports by session within each "
        "account's window)")
    assert main(["report", "--quota", "--db", ledger_db, "--agent", "ana"]) == 2
    assert "--agent: does not apply to --quota" in capsys.readouterr().err
    # the rows of this ledger carry no quota headers
    assert main(["report", "--quota", "--db", ledger_db]) == 0
    assert capsys.readouterr().out.strip() == \
        "(no calls with a 5-hour quota reading in this range)"
    assert main(["report", "--quota", "--db", ledger_db, "--format", "csv"]) == 0
    assert capsys.readouterr().out.strip() == ("upstream,account,window_resets,session,calls,"
                                               "measured_calls,share,before,after")


async def test_a_pending_background_response_is_neither_zero_nor_unpriced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "p.db")
    none = dict.fromkeys(("input_tokens", "cache_read_tokens", "cache_write_tokens",
                          "output_tokens", "reasoning_tokens", "total_tokens"))
    await ledger_of_now(path, dict(call_id="bg1", agent="poller", operation="responses",
                                   usage_source="pending", cost_usd=None, price_source=None,
                                   **none))
    assert main(["report", "--db", path, "--by", "agent", "--since", "1d",
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["pending_calls"] == 1 and out["totals"]["unpriced_calls"] == 0
    assert out["totals"]["cost_usd"] is None
    assert main(["report", "--db", path, "--by", "agent", "--since", "1d"]) == 0
    text = capsys.readouterr().out
    assert "1 background response(s) were pending" in text and "unpriced call" not in text
    assert main(["calls", "--db", path, "--agent", "poller"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("pending")
