"""A batch's roll-up summed in Python (`proxy.backends.sqlite_rollup`) holds exactly what SQL
computes from the batch's raw rows, replays and half-unit costs included."""

from __future__ import annotations

import random
from dataclasses import replace
from decimal import Decimal
from typing import Any

from tests.backends.test_rollup import random_records


async def test_sqlite_batch_rollup_equals_the_sql_rollup_of_its_rows(tmp_path: Any) -> None:
    """A batch of new rows is summed in Python; replayed rows, in SQL. The roll-up tables
    must hold exactly what SQL computes from the raw rows (costs rounded to 1e-10 USD as
    SQLite rounds: half away from zero, including costs that land on a half unit)."""
    import sqlite3

    from proxy.backends.schema import rollups
    from proxy.backends.sqlite import SqliteBackend

    rng = random.Random(7)
    records = random_records(rng, 2000)
    records = [replace(r, cost_usd=rng.choice([
        r.cost_usd, None if r.cost_usd is None else Decimal(rng.random() / 7),
        Decimal(rng.randrange(0, 10**6)) / 10**10 + Decimal("0.5") / 10**10]))
        for r in records]
    records = [replace(r, list_cost_usd=None if r.cost_usd is None else rng.choice([
        r.cost_usd, Decimal(rng.random() / 5),
        Decimal(rng.randrange(0, 10**6)) / 10**10 + Decimal("0.5") / 10**10]))
        for r in records]
    path = str(tmp_path / "ledger.db")
    backend = SqliteBackend(path)
    await backend.open()
    try:
        rows = [r.to_row() for r in records]
        for i in range(0, len(rows), 250):
            await backend.write(rows[i:i + 250])
        await backend.write(rng.sample(rows, 300) + [records[0].to_row()])  # replays
    finally:
        await backend.aclose()
    conn = sqlite3.connect(path)
    try:
        def tables() -> list[list[Any]]:
            return [sorted(conn.execute(f"SELECT * FROM {t}").fetchall())
                    for t in ("llm_usage_hourly", "llm_usage_daily")]
        written = tables()
        assert sum(r[8] for r in written[0]) == len(records)
        conn.execute("DELETE FROM llm_usage_hourly")
        conn.execute("DELETE FROM llm_usage_daily")
        for sql in rollups("sqlite", "llm_usage"):
            conn.execute(sql)
        assert written == tables()
    finally:
        conn.close()
