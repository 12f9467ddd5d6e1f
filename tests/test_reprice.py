"""`tokenbooth reprice`: costs recomputed from stored tokens, priced_units, served tier and
batch id, by hand from the published prices; --dry-run changes nothing; a ledger written
before these columns existed is migrated in place first."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from proxy.backends.schema import SQLITE_MIGRATIONS as MIGRATIONS
from proxy.cli import main
from proxy.record import COLUMNS, CallRecord
from proxy.sinks.ledger import Ledger
from tests.factories import make_record as _make_record

M = Decimal(1_000_000)
NOW = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def make_record(**kw: Any) -> CallRecord:
    return _make_record(**{"started_at": NOW, "ended_at": NOW, **kw})


@pytest.fixture
async def stale_ledger(tmp_path: Path) -> str:
    """Rows priced wrongly (as an older price list or version did)."""
    path = str(tmp_path / "p.db")
    ledger = Ledger(path, flush_seconds=0.01)
    await ledger.open()
    for rec in (
        make_record(call_id="flex", request_model="gpt-5", response_model="gpt-5-2025-08-07",
                    input_tokens=1000, cache_read_tokens=0, output_tokens=500,
                    reasoning_tokens=200, service_tier="flex", cost_usd=Decimal("0.00625")),
        make_record(call_id="search", upstream="anthropic", dialect="anthropic",
                    request_model="claude-sonnet-4-20250514", response_model=None,
                    input_tokens=21900, cache_read_tokens=0, output_tokens=640,
                    reasoning_tokens=None, priced_units={"web_searches": 2},
                    cost_usd=Decimal("0.0753")),
        make_record(call_id="batch", request_model=None, response_model="gpt-4o-mini",
                    input_tokens=1200, cache_read_tokens=0, output_tokens=300,
                    batch_id="file-1", operation="batch", cost_usd=None, price_source=None),
        make_record(call_id="own", cost_usd=Decimal("0.5"), price_source="provider"),
    ):
        ledger.observe(rec)
    await ledger.flush()
    await ledger.aclose()
    return path


def costs(path: str) -> dict[str, float | None]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT call_id, cost_usd FROM llm_usage").fetchall())
    finally:
        conn.close()


def test_dry_run_prints_old_and_new_and_changes_nothing(stale_ledger: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    before = costs(stale_ledger)
    assert main(["reprice", "--since", "1d", "--db", stale_ledger, "--dry-run",
                 "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert costs(stale_ledger) == before
    assert "would change the cost of 3" in out and "gpt-4o-mini" in out


def test_reprice_recomputes_every_billed_unit(stale_ledger: str) -> None:
    assert main(["reprice", "--since", "1d", "--db", stale_ledger]) == 0
    got = costs(stale_ledger)
    # gpt-5 served at flex: $0.625 in, $5 out per million
    assert Decimal(repr(got["flex"])) == (1000 * Decimal("0.625") + 500 * 5) / M
    # Sonnet 4: $3 in, $15 out, and 2 web searches at $10 per 1,000
    assert Decimal(repr(got["search"])) == (21900 * 3 + 640 * 15) / M + Decimal("0.02")
    # a gpt-4o-mini batch line: $0.075 in, $0.30 out
    assert Decimal(repr(got["batch"])) == (1200 * Decimal("0.075") + 300 * Decimal("0.3")) / M
    assert got["own"] == 0.5  # the provider's own charge is never re-priced


def test_an_old_ledger_is_migrated_in_place(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0][1])
    conn.execute("PRAGMA user_version = 1")
    old_cols = COLUMNS[:COLUMNS.index("service_tier")]
    row = make_record(call_id="old").to_row()[:len(old_cols)]
    conn.execute(f"INSERT INTO llm_usage ({', '.join(old_cols)}) VALUES "
                 f"({', '.join('?' * len(old_cols))})", row)
    conn.commit()
    conn.close()
    assert main(["reprice", "--since", "1d", "--db", path]) == 0
    conn = sqlite3.connect(path)
    try:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(llm_usage)")]
        assert {"service_tier", "priced_units", "batch_id"} <= set(cols)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        # gpt-4o: 80 x $2.50 + 20 x $1.25 (cached) + 10 x $10 per million
        (cost,) = conn.execute("SELECT cost_usd FROM llm_usage").fetchone()
        assert Decimal(repr(cost)) == (80 * Decimal("2.5") + 20 * Decimal("1.25") + 100) / M
    finally:
        conn.close()


def test_reprice_applies_the_adjustments_configured_now(stale_ledger: str,
                                                        tmp_path: Path) -> None:
    """Both costs are recomputed: the list price from the stored units, the charged cost
    under `pricing.adjustments`; a provider's own charge keeps its list cost and gets the
    current adjustment."""
    config = tmp_path / "adjusted.yaml"
    config.write_text("pricing:\n  adjustments:\n"
                      "    - {match: {model: 'gpt-5*'}, percent: -10}\n"
                      "    - {match: {upstream: openai}, percent: 5}\n")
    assert main(["reprice", "--config", str(config), "--since", "1d", "--db",
                 stale_ledger]) == 0
    conn = sqlite3.connect(stale_ledger)
    try:
        got = {k: (None if lc is None else Decimal(repr(lc)), None if c is None
                   else Decimal(repr(c))) for k, lc, c in conn.execute(
            "SELECT call_id, list_cost_usd, cost_usd FROM llm_usage")}
        hour = conn.execute("SELECT sum(list_cost_units), sum(cost_units) "
                            "FROM llm_usage_hourly").fetchone()
    finally:
        conn.close()
    # gpt-5 served at flex: $0.625 in, $5 out per million; 10 % off
    flex = (1000 * Decimal("0.625") + 500 * 5) / M
    assert got["flex"] == (flex, flex * Decimal("0.9"))
    # Sonnet 4 at anthropic: $3 in, $15 out, 2 web searches at $10 per 1,000; no adjustment
    search = (21900 * 3 + 640 * 15) / M + Decimal("0.02")
    assert got["search"] == (search, search)
    # a gpt-4o-mini batch line at openai: $0.075 in, $0.30 out; 5 % markup
    batch = (1200 * Decimal("0.075") + 300 * Decimal("0.3")) / M
    assert got["batch"] == (batch, batch * Decimal("1.05"))
    # the provider's own charge ($0.50) at openai: 5 % markup, its list cost kept
    assert got["own"] == (Decimal("0.5"), Decimal("0.525"))
    # the roll-up follows, in whole 1e-10 USD units
    assert hour == (int((flex + search + batch + Decimal("0.5")) * 10**10),
                    int((flex * Decimal("0.9") + search + batch * Decimal("1.05")
                         + Decimal("0.525")) * 10**10))
