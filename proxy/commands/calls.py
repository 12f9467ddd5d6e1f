"""`tokenbooth calls`: the most recent calls of a session, agent or run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from proxy.backends import LedgerBackend, query
from proxy.commands.common import emit, with_ledger

__all__ = ["add_parser", "run"]

_CALL_COLS = ("started_at", "call_id", "agent", "session", "run", "upstream", "model",
              "outcome", "input_tokens", "output_tokens", "usage_source", "cost_usd",
              "list_cost_usd")


def add_parser(sub: Any, add_common: Callable[..., None]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "calls", help="recent calls for a session, agent or run")
    add_common(p)
    p.add_argument("--session")
    p.add_argument("--agent")
    p.add_argument("--run")
    p.add_argument("--since")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    return p


def run(args: argparse.Namespace, config: Any) -> int:
    if args.limit < 1:
        raise query.QueryError("--limit", "must be at least 1")
    filters = {"session": args.session, "agent": args.agent, "run": args.run}
    since = query.parse_time("--since", args.since)

    async def work(backend: LedgerBackend) -> list[dict[str, Any]]:
        return await backend.calls(since, None, filters, args.limit)

    rows = with_ledger(config, work)
    if args.format != "json":  # its cost is not known yet: not unpriced
        rows = [{**r, "cost_usd": "pending", "list_cost_usd": "pending"}
                if r.get("usage_source") == "pending" else r
                for r in rows]
    emit(rows, _CALL_COLS if args.format != "json" else list(rows[0]) if rows else [],
         args.format, no_cost="unpriced")
    return 0
