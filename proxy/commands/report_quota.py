"""`tokenbooth report --quota`: each session's share of each provider account's 5-hour
window, from the utilization the provider reported before and after its calls."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.backends import LedgerBackend, query
from proxy.commands.common import emit, with_ledger

__all__ = ["run"]


def run(args: argparse.Namespace, config: Any) -> int:
    from proxy import quota_report

    if args.by is not None:
        raise query.QueryError("--by", "does not apply to --quota (it reports by session "
                                        "within each account's window)")
    for name in ("agent", "run", "model"):
        if getattr(args, name, None):
            raise query.QueryError(f"--{name}", "does not apply to --quota (use --session "
                                                "or --upstream)")
    since = query.parse_time("--since", args.since)
    until = query.parse_time("--until", args.until)

    async def work(backend: LedgerBackend) -> list[dict[str, Any]]:
        return await backend.quota_calls(since, until)

    view = quota_report.quota_view(with_ledger(config, work), args.session, args.upstream)
    cols = quota_report.COLUMNS
    if args.format == "json":
        emit(view["rows"], cols, "json", {"window": view["window"],
                                          "windows": view["windows"], "since": since,
                                          "until": until})
    elif args.format == "csv":
        emit(view["rows"], cols, "csv")
    elif not view["rows"]:
        print("(no calls with a 5-hour quota reading in this range)")
    else:
        emit(quota_report.table_rows(view), cols, "table")
        print("\nshare: the rise of the account's 5-hour utilization from each call's response "
              "to the account's next response;\na window's latest call is measured once a "
              "later call reports (calls - measured_calls are not yet)")
    return 0
