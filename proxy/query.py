"""Reading the ledger: grouped usage and recent calls, shared by the CLI and the HTTP API.

Validation errors are QueryError naming the parameter; the callers turn them into a 400
or a one-line CLI error.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["FILTERS", "GROUP_KEYS", "QueryError", "calls", "parse_group_by", "parse_time",
           "usage"]

GROUP_KEYS = ("agent", "session", "run", "model", "upstream", "operation", "end_user",
              "client", "day", "week", "month")
FILTERS = ("agent", "session", "run", "upstream", "model", "operation", "end_user", "client",
           "outcome")
COUNTERS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
            "reasoning_tokens", "total_tokens")
_EXPR = {
    "day": "substr(started_at, 1, 10)",
    "week": "date(substr(started_at, 1, 10), 'weekday 0', '-6 days')",
    "month": "substr(started_at, 1, 7)",
}
_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class QueryError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def parse_time(param: str, value: str | None, now: datetime | None = None) -> str | None:
    """`7d`, `12h`, `30m`, `2w` ago, or an ISO date/datetime -> ledger timestamp text."""
    if value is None or value == "":
        return None
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(value.strip())
    if m:
        when = now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    else:
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise QueryError(param, f"{value!r} is not a duration like 7d/12h/30m/2w "
                                    f"or a date like 2026-11-01") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{when.astimezone(UTC).microsecond // 1000:03d}Z"


def parse_group_by(value: str | Sequence[str] | None) -> list[str]:
    keys = value.split(",") if isinstance(value, str) else list(value or [])
    out = []
    for key in (k.strip() for k in keys):
        if not key:
            continue
        if key.startswith("tag:") and re.fullmatch(r"tag:[a-z0-9_]{1,64}", key):
            out.append(key)
        elif key in GROUP_KEYS:
            out.append(key)
        else:
            raise QueryError("group_by", f"unknown key {key!r} (allowed: "
                                         f"{', '.join(GROUP_KEYS)}, tag:<key>)")
    return out


def _expr(key: str) -> str:
    if key.startswith("tag:"):
        return f"json_extract(tags, '$.{key[4:]}')"
    return _EXPR.get(key, key)


def _where(since: str | None, until: str | None,
           filters: Mapping[str, str | None]) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if since:
        clauses.append("started_at >= ?")
        args.append(since)
    if until:
        clauses.append("started_at < ?")
        args.append(until)
    for key, value in filters.items():
        if value is None or value == "":
            continue
        if key not in FILTERS:
            raise QueryError(key, f"unknown filter (allowed: {', '.join(FILTERS)})")
        clauses.append(f"{key} = ?")
        args.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


_AGGREGATES = (
    "COUNT(*) AS calls, "
    + ", ".join(f"COALESCE(SUM({c}), 0) AS {c}" for c in COUNTERS)
    + ", SUM(cost_usd) AS cost_usd"
    + ", SUM(CASE WHEN cost_usd IS NULL AND usage_source != 'none' THEN 1 ELSE 0 END)"
      " AS unpriced_calls"
    + ", SUM(CASE WHEN usage_source IN ('estimated', 'partial') THEN 1 ELSE 0 END)"
      " AS estimated_calls"
)


def _counters(row: sqlite3.Row) -> dict[str, Any]:
    out = {k: row[k] for k in ("calls", *COUNTERS, "unpriced_calls", "estimated_calls")}
    out["unpriced_calls"] = out["unpriced_calls"] or 0
    out["estimated_calls"] = out["estimated_calls"] or 0
    out["cost_usd"] = round(row["cost_usd"], 10) if row["cost_usd"] is not None else None
    return out


def usage(conn: sqlite3.Connection, group_by: Sequence[str], since: str | None,
          until: str | None, filters: Mapping[str, str | None]) -> dict[str, Any]:
    where, args = _where(since, until, filters)
    groups: list[dict[str, Any]] = []
    if group_by:
        cols = ", ".join(f"{_expr(k)} AS g{i}" for i, k in enumerate(group_by))
        order = ", ".join(f"g{i}" for i in range(len(group_by)))
        sql = (f"SELECT {cols}, {_AGGREGATES} FROM llm_usage{where} GROUP BY {order} "
               f"ORDER BY cost_usd IS NULL, cost_usd DESC, {order}")
        for row in conn.execute(sql, args):
            g = {k: row[f"g{i}"] for i, k in enumerate(group_by)}
            groups.append({**g, **_counters(row)})
    totals = _counters(conn.execute(f"SELECT {_AGGREGATES} FROM llm_usage{where}", args)
                       .fetchone())
    return {"since": since, "until": until, "group_by": list(group_by), "groups": groups,
            "totals": totals}


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out.pop("id", None)
    out["stream"] = bool(out.get("stream"))
    for key in ("tags", "usage_raw", "priced_units"):
        if out.get(key):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                pass
    if "priced_units" in out and not out["priced_units"]:
        out["priced_units"] = {}  # as the live feed's call_finished row has it
    return out


def calls(conn: sqlite3.Connection, since: str | None, until: str | None,
          filters: Mapping[str, str | None], limit: int = 100,
          call_id: str | None = None) -> list[dict[str, Any]]:
    if call_id is not None:
        row = conn.execute("SELECT * FROM llm_usage WHERE call_id = ?", (call_id,)).fetchone()
        return [_row(row)] if row else []
    where, args = _where(since, until, filters)
    sql = f"SELECT * FROM llm_usage{where} ORDER BY started_at DESC, id DESC LIMIT ?"
    return [_row(r) for r in conn.execute(sql, [*args, limit])]
