"""`tokenbooth reprice`: recompute cost_usd, list_cost_usd and price_source of a time range
from the stored tokens and priced_units, with the prices and `pricing.adjustments`
configured now (`--dry-run`: only show old and new totals per model)."""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from proxy.backends import LedgerBackend, query
from proxy.commands.common import emit, with_ledger

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, add_common: Callable[..., None]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "reprice", help="recompute cost from stored tokens with current prices")
    add_common(p)
    p.add_argument("--since", required=True, help="7d, 12h, 2w, or a date like 2026-11-01")
    p.add_argument("--until")
    p.add_argument("--dry-run", action="store_true",
                   help="print old and new totals per model; change nothing")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    return p


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def run(args: argparse.Namespace, config: Any) -> int:
    from proxy.pricing import PriceBook
    from proxy.reprice import COLUMNS, Repriced, reprice

    since = query.parse_time("--since", args.since)
    until = query.parse_time("--until", args.until)
    changes: list[Repriced] = []

    def change(rows: list[Any]) -> list[tuple[float | None, float | None, str | None, str]]:
        changes.extend(reprice(rows, PriceBook(config.prices, config.adjustments),
                               config.upstreams))
        return [(_float(c.new_usd), _float(c.new_list_usd), c.source, c.call_id)
                for c in changes]

    async def work(backend: LedgerBackend) -> None:
        await backend.reprice(since, until, change, COLUMNS, args.dry_run)

    with_ledger(config, work, migrate=True)
    totals: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0)] * 4)
    for c in changes:
        t = totals[c.model or "(unknown)"]
        t[0] += c.old_usd or 0
        t[1] += c.new_usd or 0
        t[2] += c.old_list_usd or 0
        t[3] += c.new_list_usd or 0
    changed = [c for c in changes if c.new_usd != c.old_usd or c.new_list_usd != c.old_list_usd]
    emit([{"model": m, "calls": sum(1 for c in changes if (c.model or "(unknown)") == m),
           "old_cost_usd": float(o), "new_cost_usd": float(n),
           "old_list_cost_usd": float(ol), "new_list_cost_usd": float(nl)}
          for m, (o, n, ol, nl) in sorted(totals.items())],
         ["model", "calls", "old_cost_usd", "new_cost_usd", "old_list_cost_usd",
          "new_list_cost_usd"], args.format)
    verb = "would change" if args.dry_run else "changed"
    print(f"\n{len(changes)} priced call(s) read; {verb} the cost of {len(changed)}")
    return 0
