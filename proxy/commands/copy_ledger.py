"""`tokenbooth copy-ledger --to TARGET`: copy every row of the configured ledger into
another (SQLite to PostgreSQL, say) through the destination's own write, so its roll-up
and budget spend follow; a row it holds already is skipped, so the copy can run again
after an interruption."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from proxy.backends import UnknownLedger, open_backend, query
from proxy.commands.common import open_ledger, run_async

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, add_common: Callable[..., None]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "copy-ledger", help="copy every row into another ledger (once)")
    add_common(p)
    p.add_argument("--to", required=True, help="the destination: postgresql://... or a "
                                               "SQLite path")
    return p


def run(args: argparse.Namespace, config: Any) -> int:
    source = open_ledger(config.ledger.target)
    try:
        dest = open_backend(args.to)
    except UnknownLedger as exc:
        raise query.QueryError("--to", str(exc)) from None
    if repr(dest) == repr(source):
        raise query.QueryError("--to", "is the ledger being copied")

    held = 0

    async def copy() -> int:
        nonlocal held
        copied = 0
        try:
            await dest.open()
            after = 0
            while True:
                batch = await source.rows_after(after, 20_000)
                if not batch:
                    return copied
                rows = [row for _, row in batch]
                there = len(await dest.recorded([row[0] for row in rows]))  # call_id first
                await dest.write(rows)
                after = batch[-1][0]
                copied += len(rows) - there
                held += there
                print(f"\rcopied {copied:,} rows", end="", file=sys.stderr, flush=True)
        finally:
            await source.aclose()
            await dest.aclose()

    copied = run_async(copy())
    print(file=sys.stderr)
    print(f"copied {copied:,} row(s) from {source!r} to {dest!r}"
          + (f"; skipped {held:,} it held already" if held else ""))
    return 0
