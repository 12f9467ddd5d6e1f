"""Ledger micro-benchmark: rows per second written in batches, and enqueue cost, on both
backends.

Feeds N call records through the real Ledger sink (the same `handle` the recorder calls),
then waits until the writer has committed them all (rows, roll-up, budget charges), on a
fresh SQLite file and a fresh PostgreSQL database (a throwaway local cluster unless
`--pg-url` names a server).

    python -m bench.ledger_bench [--rows 200000] [--backend sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.records import bench_record
from proxy.sinks.ledger import Ledger


async def run(target: str, label: str, n: int) -> None:
    ledger = Ledger(target, queue_rows=n + 1)
    await ledger.open()
    records = [bench_record(call_id=f"call-{i:08d}", agent=f"agent-{i % 50}",
                           session=f"s-{i % 997}", tags={"round": str(i % 13)})
               for i in range(n)]
    t0 = time.perf_counter()
    for r in records:
        ledger.observe(r)
    t1 = time.perf_counter()
    await ledger.flush()
    t2 = time.perf_counter()
    stored = (await ledger.backend.usage([], None, None, {}))["totals"]["calls"]
    await ledger.aclose()
    assert stored == n, f"{stored} rows stored, {n} expected"
    print(f"[{label}] rows: {n}  enqueue: {(t1 - t0) / n * 1e6:.1f} us/row "
          f"(to_row + put_nowait)")
    print(f"[{label}] writer: {n / (t2 - t1):,.0f} rows/s once queued ({t2 - t1:.2f} s, "
          f"batches of up to 20,000 rows with their roll-up, one "
          f"{ledger.flush_seconds}s gathering wait per batch)")
    print(f"[{label}] end to end: {n / (t2 - t0):,.0f} rows/s")


async def main(args: argparse.Namespace) -> None:
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory(prefix="tb-ledger-") as tmp:
            await run(str(Path(tmp) / "bench.db"), "sqlite", args.rows)
    if args.backend in ("postgresql", "both"):
        from bench.pg import postgres_url

        with postgres_url(args.pg_url, "ledger_bench") as url:
            await run(url, "postgresql", args.rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-url", help="an existing PostgreSQL database (default: a "
                                         "throwaway local cluster)")
    asyncio.run(main(parser.parse_args()))
