"""A SQLite ledger of 30 calls over the last 90 hours, for the ledger's commands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

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
        ledger.observe(make_record(
            call_id=f"r{i}", started_at=ts, ended_at=ts, agent=["ana", "bob"][i % 2],
            session=f"s{i % 3}", model=["gpt-4o", "claude-x"][i % 2], input_tokens=100 * i,
            output_tokens=10 * i, total_tokens=110 * i, cache_read_tokens=i,
            cost_usd=None if unpriced else Decimal(i) / 1000,
            usage_source="estimated" if i % 5 == 0 else "reported"))
    await ledger.flush()
    await ledger.aclose()
    return path
