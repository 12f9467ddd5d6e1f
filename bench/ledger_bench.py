"""Ledger micro-benchmark: rows per second written in batches, and enqueue cost.

Feeds N call records through the real Ledger sink (the same `handle` the recorder calls),
then waits until the writer has committed them all, on a fresh SQLite file.

    python bench/ledger_bench.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.sinks.ledger import Ledger
from tests.factories import make_record


async def run(n: int) -> None:
    path = str(Path(tempfile.mkdtemp(prefix="tb-ledger-")) / "bench.db")
    ledger = Ledger(path, queue_rows=n + 1)
    await ledger.open()
    records = [make_record(call_id=f"call-{i:08d}", agent=f"agent-{i % 50}",
                           session=f"s-{i % 997}", tags={"round": str(i % 13)})
               for i in range(n)]
    t0 = time.perf_counter()
    for r in records:
        await ledger.handle(r)
    t1 = time.perf_counter()
    await ledger.flush()
    t2 = time.perf_counter()
    await ledger.aclose()
    with sqlite3.connect(path) as conn:
        stored = conn.execute("SELECT count(*) FROM llm_usage").fetchone()[0]
    assert stored == n, f"{stored} rows stored, {n} expected"
    print(f"rows: {n}  enqueue: {(t1 - t0) / n * 1e6:.1f} us/row (to_row + put_nowait)")
    print(f"writer: {n / (t2 - t1):,.0f} rows/s once queued ({t2 - t1:.2f} s, batches of "
          f"up to 20,000 rows, one {ledger.flush_seconds}s gathering wait per batch)")
    print(f"end to end: {n / (t2 - t0):,.0f} rows/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    asyncio.run(run(parser.parse_args().rows))
