"""`tokenbooth report` and `calls`: totals equal the ledger; CSV and JSON parse; bad input
is one clear line."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.sinks.ledger import Ledger
from tests.factories import make_record


@pytest.fixture
async def ledger_db(tmp_path: Path) -> str:
    path = str(tmp_path / "r.db")
    ledger = Ledger(path, flush_seconds=0.01)
    await ledger.open()
    now = datetime.now(UTC)
    for i in range(30):
        ts = (now - timedelta(hours=3 * i, minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        unpriced = i % 7 == 0
        await ledger.handle(make_record(
            call_id=f"r{i}", started_at=ts, ended_at=ts, agent=["ana", "bob"][i % 2],
            session=f"s{i % 3}", model=["gpt-4o", "claude-x"][i % 2], input_tokens=100 * i,
            output_tokens=10 * i, total_tokens=110 * i, cache_read_tokens=i,
            cost_usd=None if unpriced else Decimal(i) / 1000,
            usage_source="estimated" if i % 5 == 0 else "reported"))
    await ledger.flush()
    await ledger.aclose()
    return path


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
    assert main(["report", "--db", "/nonexistent/x.db"]) == 2


def test_calls_for_a_session(ledger_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calls", "--db", ledger_db, "--session", "s1", "--limit", "3",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 3 and all(r["session"] == "s1" for r in rows)
    assert rows[0]["started_at"] >= rows[1]["started_at"]
    assert main(["calls", "--db", ledger_db, "--agent", "ana"]) == 0
    assert "usage_source" in capsys.readouterr().out
