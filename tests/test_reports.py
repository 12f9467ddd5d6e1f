"""`tokenbooth report` and `calls`: totals equal the ledger; CSV and JSON parse; bad input
is one clear line."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
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
    assert main(["report", "--db", ledger_db, "--since", "999999999d"]) == 2  # past year 1
    err = capsys.readouterr().err
    assert "--since" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert main(["report", "--db", "/nonexistent/x.db"]) == 2


def test_calls_for_a_session(ledger_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calls", "--db", ledger_db, "--session", "s1", "--limit", "3",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 3 and all(r["session"] == "s1" for r in rows)
    assert rows[0]["started_at"] >= rows[1]["started_at"]
    assert main(["calls", "--db", ledger_db, "--agent", "ana"]) == 0
    assert "usage_source" in capsys.readouterr().out


async def test_a_group_with_no_priced_usage_shows_a_dash_and_an_unpriced_call_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "u.db")
    ledger = Ledger(path, flush_seconds=0.01)
    await ledger.open()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    await ledger.handle(make_record(call_id="u1", agent="mystery", cost_usd=None,
                                    price_source=None, started_at=now, ended_at=now))
    await ledger.handle(make_record(call_id="p1", agent="paid", cost_usd=Decimal("0.01"),
                                    started_at=now, ended_at=now))
    await ledger.flush()
    await ledger.aclose()
    assert main(["report", "--db", path, "--by", "agent", "--since", "1d"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    assert lines["mystery"].split()[-4] == "-" and "unpriced" not in lines["mystery"]
    assert "$0.010000" in lines["paid"]
    assert main(["calls", "--db", path, "--agent", "mystery"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("unpriced")


async def test_a_pending_background_response_is_neither_zero_nor_unpriced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "p.db")
    ledger = Ledger(path, flush_seconds=0.01)
    await ledger.open()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    none = dict.fromkeys(("input_tokens", "cache_read_tokens", "cache_write_tokens",
                          "output_tokens", "reasoning_tokens", "total_tokens"))
    await ledger.handle(make_record(call_id="bg1", agent="poller", operation="responses",
                                    usage_source="pending", cost_usd=None, price_source=None,
                                    started_at=now, ended_at=now, **none))
    await ledger.flush()
    await ledger.aclose()
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


def test_prices_are_readable_with_tiers_and_variants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prices", "claude-sonnet-4-5", "--upstream", "anthropic"]) == 0
    out = capsys.readouterr().out
    assert "input: $3 per million tokens; above 200,000 input tokens: $6" in out
    assert "web searches: $10 per 1,000 web searches" in out
    assert "when processing batch:" in out and "Decimal" not in out and "Tier(" not in out
    assert main(["prices", "gpt-5", "--upstream", "openai", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["prices"]["input"] == "$1.25 per million tokens"
    assert doc["variants"]["service_tier flex"]["input"] == "$0.625 per million tokens"


def test_prices_finds_a_model_as_the_ledger_prices_it_without_upstream(
        capsys: pytest.CaptureFixture[str]) -> None:
    # an embedding model no provider claims by name: the ledger prices it through the
    # openai upstream, and so does `prices` without --upstream (OpenAI: $0.02 per million)
    assert main(["prices", "text-embedding-3-small"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("text-embedding-3-small (openai):")
    assert "input: $0.02 per million tokens" in out
    assert main(["prices", "gpt-4o", "--upstream", "nosuch"]) == 2
    assert "unknown upstream 'nosuch'" in capsys.readouterr().err


def test_check_config_prints_the_estimation_factors_it_applies(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text("estimation: {factors: {gemini: 1.1}}\n")
    assert main(["check-config", "--config", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    factors = out.split("factors:")[1].split("budgets")[0]
    assert "anthropic: 1.2" in factors and "gemini: 1.1" in factors and "openai: 1.0" in factors


def test_import_skips_what_is_not_a_regular_file(tmp_path: Path) -> None:
    """A link to /dev/zero would be read forever, a FIFO would block on open: each is
    skipped and said so, and the real transcript beside them is imported."""
    root = tmp_path / "projects" / "-work-repo"
    root.mkdir(parents=True)
    (root / "zero.jsonl").symlink_to("/dev/zero")
    os.mkfifo(root / "pipe.jsonl")
    (root / "real.jsonl").write_text(json.dumps({
        "type": "assistant", "sessionId": "s1", "requestId": "req_1",
        "timestamp": "2026-11-29T10:00:00.000Z",
        "message": {"id": "msg_1", "model": "claude-sonnet-4-20250514",
                    "usage": {"input_tokens": 10, "output_tokens": 2}}}) + "\n")
    db = tmp_path / "l.db"
    done = subprocess.run(  # a process: if it blocked, the timeout ends it and the test fails
        [sys.executable, "-m", "proxy", "import", "claude-code", str(tmp_path / "projects"),
         "--db", str(db)], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert "imported 1 call(s) from 1 file(s)" in done.stdout
    assert "2 path(s) not a regular file" in done.stdout
    assert "zero.jsonl: not a regular file, skipped" in done.stderr
    assert "pipe.jsonl: not a regular file, skipped" in done.stderr
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT upstream_request_id FROM llm_usage").fetchall() == [("msg_1",)]
    conn.close()
