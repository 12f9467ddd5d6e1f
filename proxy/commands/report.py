"""`tokenbooth report`: usage and spend grouped by any key, with the month to date and its
forecast, as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import calendar
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from proxy.backends import LedgerBackend, query
from proxy.commands.common import emit, with_ledger

__all__ = ["add_parser", "month_to_date", "run"]

_REPORT_COLS = ("calls", "input_tokens", "cache_read_tokens", "cache_write_tokens",
                "output_tokens", "reasoning_tokens", "total_tokens", "cost_usd",
                "list_cost_usd", "unpriced_calls", "estimated_calls", "pending_calls")


def add_parser(sub: Any, add_common: Callable[..., None]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("report",
                                                help="usage and spend grouped by any key")
    add_common(p)
    p.add_argument("--by", help=f"comma-separated: {', '.join(query.GROUP_KEYS)}, tag:<key> "
                                "(default agent,model)")
    p.add_argument("--quota", action="store_true",
                   help="each session's share of each provider account's 5-hour window")
    p.add_argument("--since", help="7d, 12h, 2w, or a date like 2026-11-01")
    p.add_argument("--until")
    for f in ("agent", "session", "run", "model", "upstream"):
        p.add_argument(f"--{f}")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    return p


async def month_to_date(backend: LedgerBackend, now: datetime) -> dict[str, Any]:
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    since = start.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    totals = (await backend.usage([], since, None, {}))["totals"]
    days = calendar.monthrange(now.year, now.month)[1]
    elapsed = max((now - start).total_seconds() / 86400, 1 / 24)
    spent = totals["cost_usd"] or 0.0
    listed = totals["list_cost_usd"] or 0.0
    return {"month": start.strftime("%Y-%m"), "cost_usd": spent,
            "forecast_usd": round(spent / elapsed * days, 6),
            "list_cost_usd": listed,  # before pricing.adjustments
            "list_forecast_usd": round(listed / elapsed * days, 6),
            "unpriced_calls": totals["unpriced_calls"],
            "estimated_calls": totals["estimated_calls"],
            "pending_calls": totals["pending_calls"]}


def run(args: argparse.Namespace, config: Any) -> int:
    if args.quota:
        from proxy.commands import report_quota

        return report_quota.run(args, config)
    group_by = query.parse_group_by(args.by or "agent,model")
    since = query.parse_time("--since", args.since)
    until = query.parse_time("--until", args.until)
    filters = {k: getattr(args, k, None) for k in ("agent", "session", "run", "model",
                                                   "upstream")}

    async def work(backend: LedgerBackend) -> tuple[dict[str, Any], dict[str, Any]]:
        return (await backend.usage(group_by, since, until, filters),
                await month_to_date(backend, datetime.now(UTC)))

    result, mtd = with_ledger(config, work)
    rows = [*result["groups"], {**{k: "TOTAL" for k in group_by[:1]}, **result["totals"]}]
    cols = [*group_by, *_REPORT_COLS]
    if args.format == "json":
        emit(result["groups"], cols, "json", {"totals": result["totals"], "since": since,
                                              "until": until, "month_to_date": mtd})
        return 0
    emit(rows if args.format == "table" else result["groups"], cols, args.format)
    if args.format == "table":
        note = []
        if result["totals"]["unpriced_calls"]:
            note.append(f"{result['totals']['unpriced_calls']} unpriced call(s) are not in "
                        f"cost_usd")
        if result["totals"]["estimated_calls"]:
            note.append(f"{result['totals']['estimated_calls']} call(s) hold estimated tokens")
        if result["totals"]["pending_calls"]:
            note.append(f"{result['totals']['pending_calls']} background response(s) were "
                        "pending when created: each one's usage and cost are a row of their "
                        "own (same upstream_request_id) once the proxy sees it finished")
        print(f"\nMonth to date ({mtd['month']}): ${mtd['cost_usd']:,.4f}; "
              f"forecast for the month ${mtd['forecast_usd']:,.4f}")
        if mtd["list_cost_usd"] != mtd["cost_usd"]:  # pricing.adjustments moved it
            print(f"At list prices: ${mtd['list_cost_usd']:,.4f}; forecast "
                  f"${mtd['list_forecast_usd']:,.4f}")
        for n in note:
            print(f"Note: {n}")
    return 0
