"""Reading the ledger: grouped usage and recent calls, shared by the CLI and the HTTP API,
as SQL for either backend (`flavor` "sqlite" or "postgresql") and the shaping of its rows.
The backends run the statements; nothing here does I/O.

Validation errors are QueryError naming the parameter; the callers turn them into a 400
or a one-line CLI error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from proxy.backends.schema import (
    COST_SCALE,
    COUNTERS,
    ESTIMATED,
    LIST_COST,
    MEASURES,
    PENDING,
    ROLLUP_DIMS,
    UNPRICED,
    cost_units,
)

__all__ = ["FILTERS", "GROUP_KEYS", "KEYS_LAST_USED", "QueryError", "calls_sql", "check_text",
           "key_calls_sql", "parse_group_by", "quota_sql", "rate_rows_sql", "spend_by_hour_sql",
           "spend_sql", "parse_time", "row_json", "usage_result", "usage_sql", "where"]

GROUP_KEYS = ("agent", "session", "run", "model", "upstream", "operation", "end_user",
              "client", "day", "week", "month")
FILTERS = ("agent", "session", "run", "upstream", "model", "operation", "end_user", "client",
           "outcome")
_TIME_KEYS = ("day", "week", "month")
_RELATIVE = re.compile(r"^([0-9]{1,9})\s*([mhdw])$")
# The ledger's times; outside them a bound means nothing, and the roll-up's keys (an hour
# or a day past a bound) and four-digit years must still be computable.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)
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
    try:
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
            when = when.astimezone(UTC)
    except OverflowError:  # a duration or offset past year 1 or 9999
        when = None
    if when is None or not _EARLIEST <= when < _LATEST:
        raise QueryError(param, f"{value!r} is outside the years 1970 to 9998")
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def check_text(param: str, value: str) -> str:
    """A value compared with ledger text: NUL is in none (PostgreSQL refuses it outright)."""
    if "\x00" in value:
        raise QueryError(param, "contains a NUL character, which no ledger value holds")
    return value


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


def tag_expr(flavor: str, key: str) -> str:
    key = key.replace("'", "''")
    if flavor == "postgresql":
        return f"(tags::jsonb ->> '{key}')"
    return f"json_extract(tags, '$.{key}')"


def _expr(key: str, flavor: str, col: str = "started_at") -> str:
    if key.startswith("tag:"):
        return tag_expr(flavor, key[4:])
    if key == "day":
        return f"substr({col}, 1, 10)"
    if key == "month":
        return f"substr({col}, 1, 7)"
    if key == "week":
        if flavor == "postgresql":
            return f"to_char(date_trunc('week', substr({col}, 1, 10)::date), 'YYYY-MM-DD')"
        return f"date(substr({col}, 1, 10), 'weekday 0', '-6 days')"
    if key in ROLLUP_DIMS:
        return f"NULLIF({key}, '')"  # the roll-up keeps NULL as ''; read both alike
    return key


def _filters(filters: Mapping[str, str | None]) -> tuple[list[str], list[Any]]:
    clauses, args = [], []
    for key, value in filters.items():
        if value is None or value == "":
            continue
        if key not in FILTERS:
            raise QueryError(key, f"unknown filter (allowed: {', '.join(FILTERS)})")
        clauses.append(f"{key} = ?")
        args.append(check_text(key, value))
    return clauses, args


def where(since: str | None, until: str | None,
          filters: Mapping[str, str | None]) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if since:
        clauses.append("started_at >= ?")
        args.append(since)
    if until:
        clauses.append("started_at < ?")
        args.append(until)
    more, more_args = _filters(filters)
    clauses += more
    args += more_args
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def _after(ts: str, n: int) -> str:
    """The first whole hour (n=13) or day (n=10) at or after a ledger timestamp, as the
    roll-up's key text."""
    key = ts[:n]
    if ts[n:] == _ZERO[n]:
        return key
    if n == 13:
        t = datetime.strptime(key, "%Y-%m-%dT%H") + timedelta(hours=1)
        return t.strftime("%Y-%m-%dT%H")
    return (datetime.strptime(key, "%Y-%m-%d") + timedelta(days=1)).strftime("%Y-%m-%d")


_ZERO = {13: ":00:00.000Z", 10: "T00:00:00.000Z"}
_TABLES = {10: ("llm_usage_daily", "day"), 13: ("llm_usage_hourly", "hour")}
Part = tuple[int | None, str | None, str | None]  # (key length or None for raw rows, lo, hi)


def plan(since: str | None, until: str | None, n: int = 10) -> list[Part]:
    """Cover [since, until) with whole days from the daily roll-up, whole hours from the
    hourly one, and raw rows for what is left at the edges."""
    lo = _after(since, n) if since else None
    hi = until[:n] if until else None
    if lo is not None and hi is not None and lo >= hi:  # no whole period inside
        return plan(since, until, 13) if n == 10 else [(None, since, until)]
    parts: list[Part] = [(n, lo, hi)]
    for a, b in ((since, f"{lo}{_ZERO[n]}" if lo else None),
                 (f"{hi}{_ZERO[n]}" if hi else None, until)):
        if a is not None and b is not None and a < b:
            parts += plan(a, b, 13) if n == 10 else [(None, a, b)]
    return parts


def rollup_covers(keys: Sequence[str]) -> bool:
    """Whether the roll-up can answer for these group keys and match/filter keys."""
    return all(k in ROLLUP_DIMS or k in _TIME_KEYS for k in keys)


def _raw_measures(flavor: str) -> list[str]:
    return ["1 AS calls", *(f"COALESCE({c}, 0) AS {c}" for c in COUNTERS),
            f"{cost_units(flavor)} AS cost_units",
            "CASE WHEN cost_usd IS NULL THEN 0 ELSE 1 END AS priced_calls",
            f"{UNPRICED} AS unpriced_calls", f"{ESTIMATED} AS estimated_calls",
            f"{PENDING} AS pending_calls",
            f"COALESCE({cost_units(flavor, LIST_COST)}, 0) AS list_cost_units"]


def usage_sql(flavor: str, group_by: Sequence[str], since: str | None, until: str | None,
              filters: Mapping[str, str | None]) -> tuple[str, list[Any]]:
    """One statement: each group's sums. Whole hours come from the roll-up when every group
    key and filter is one of its dimensions; the rest (the edges of the range, or
    everything) from raw rows. Cost is summed as integer `cost_units`."""
    fclauses, fargs = _filters(filters)
    parts: list[str] = []
    args: list[Any] = []
    covered = rollup_covers([*group_by, *(k for k, v in filters.items() if v)])
    for n, lo, hi in plan(since, until) if covered else [(None, since, until)]:
        if n is None:
            w, wargs = where(lo, hi, filters)
            cols = ", ".join([*(f"{_expr(k, flavor)} AS g{i}" for i, k in enumerate(group_by)),
                              *_raw_measures(flavor)])
            parts.append(f"SELECT {cols} FROM llm_usage{w}")
            args += wargs
            continue
        table, key = _TABLES[n]
        conds = [*([f"{key} >= ?"] if lo else []), *([f"{key} < ?"] if hi else []), *fclauses]
        cols = ", ".join([*(f"{_expr(k, flavor, key)} AS g{i}" for i, k in enumerate(group_by)),
                          *MEASURES])
        parts.append(f"SELECT {cols} FROM {table}"
                     + (f" WHERE {' AND '.join(conds)}" if conds else ""))
        args += [*([lo] if lo else []), *([hi] if hi else []), *fargs]
    gs = ", ".join(f"g{i}" for i in range(len(group_by)))
    sums = ", ".join(f"SUM({m}) AS {m}" for m in MEASURES)
    sql = (f"SELECT {gs + ', ' if gs else ''}{sums} FROM ("
           + " UNION ALL ".join(parts) + ") AS t" + (f" GROUP BY {gs}" if gs else ""))
    return sql, args


def _counters(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: int(row[k] or 0) for k in ("calls", *COUNTERS, "unpriced_calls",
                                                         "estimated_calls", "pending_calls")}
    priced = int(row["priced_calls"] or 0)
    out["cost_usd"] = round(int(row["cost_units"] or 0) / COST_SCALE, 10) if priced else None
    # the list price's cost (before pricing.adjustments): NULL exactly when cost_usd is
    out["list_cost_usd"] = round(int(row["list_cost_units"] or 0) / COST_SCALE, 10) \
        if priced else None
    return out


def usage_result(rows: Sequence[Mapping[str, Any]], group_by: Sequence[str],
                 since: str | None, until: str | None) -> dict[str, Any]:
    """The API's shape from `usage_sql`'s rows: groups by cost (unpriced last), totals
    summed from the same integers."""
    groups: list[dict[str, Any]] = []
    total = dict.fromkeys(MEASURES, 0)
    for row in rows:
        if row["calls"] is None:
            continue  # SUM over no row at all
        for m in MEASURES:
            total[m] += int(row[m] or 0)
        if group_by:
            g = {k: row[f"g{i}"] for i, k in enumerate(group_by)}
            groups.append({**g, **_counters(row)})
    groups.sort(key=lambda g: (g["cost_usd"] is None, -(g["cost_usd"] or 0),
                               *((g[k] is not None, str(g[k] or "")) for k in group_by)))
    return {"since": since, "until": until, "group_by": list(group_by), "groups": groups,
            "totals": _counters(total)}


def row_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger row as the API shows it (as the live feed's call_finished has it)."""
    out = dict(row)
    out.pop("id", None)
    out.pop("tx", None)  # PostgreSQL: the writing transaction, the export cursor's order
    out["stream"] = bool(out.get("stream"))
    for key in ("tags", "usage_raw", "priced_units", "quota"):
        if out.get(key):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                pass
    if "priced_units" in out and not out["priced_units"]:
        out["priced_units"] = {}
    if out.get("list_cost_usd") is None and "list_cost_usd" in out:  # schema.LIST_COST
        out["list_cost_usd"] = out.get("cost_usd")
    return out


def calls_sql(since: str | None, until: str | None, filters: Mapping[str, str | None],
              limit: int = 100, call_id: str | None = None) -> tuple[str, list[Any]]:
    if call_id is not None:
        return "SELECT * FROM llm_usage WHERE call_id = ?", [check_text("call_id", call_id)]
    w, args = where(since, until, filters)
    return (f"SELECT * FROM llm_usage{w} ORDER BY started_at DESC, id DESC LIMIT ?",
            [*args, limit])


def quota_sql(since: str | None, until: str | None) -> tuple[str, list[Any]]:
    """The rows that keep a response's quota headers, in the range, oldest first."""
    w, args = where(since, until, {})
    w = f"{w} AND quota IS NOT NULL" if w else " WHERE quota IS NOT NULL"
    return (f"SELECT call_id, started_at, ttft_ms, duration_ms, upstream, dialect, key_id, "
            f"session, quota FROM llm_usage{w} ORDER BY started_at, id", args)


_COLUMN_KEYS = ("upstream", "model", "client", "agent", "session", "run")


def match_column(flavor: str, key: str) -> str:
    """What a budget's or a rate limit's `match` key compares: a column (`key` is the
    consumer key's id, the row's `consumer_key`), else the tag of that name."""
    if key == "key":
        return "consumer_key"
    return key if key in _COLUMN_KEYS else tag_expr(flavor, key)


# --- rate limits (issue 20, item 2) ---
def rate_rows_sql(flavor: str, match: Mapping[str, str], since: str) -> tuple[str, list[Any]]:
    """The calls a rate limit admitted since `since` (refused ones never were), oldest
    first: (started_at, status_code, total_tokens, cost_usd). `model` is the model asked
    for, as admission compared it."""
    conds, args = ["started_at >= ?", "outcome != 'rejected'"], [since]
    for k, v in match.items():
        if k == "model":
            conds.append("(request_model = ? OR model = ?)")
            args += [v, v]
            continue
        conds.append(f"{match_column(flavor, k)} = ?")
        args.append(v)
    return (f"SELECT started_at, status_code, total_tokens, cost_usd FROM llm_usage "
            f"WHERE {' AND '.join(conds)} ORDER BY started_at", args)
# --- end rate limits ---


def spend_sql(flavor: str, match: Mapping[str, str], since: str | None) -> tuple[str, list[Any]]:
    """A budget's spend since its window started, in cost_units: whole days from the daily
    roll-up when its match keys are roll-up dimensions (a window starts at midnight UTC),
    else from raw rows (tag and session matches)."""
    if since is None or since[10:] == _ZERO[10]:
        if rollup_covers(list(match)):
            conds = [f"{k} = ?" for k in match]
            args: list[Any] = list(match.values())
            if since:
                conds.append("day >= ?")
                args.append(since[:10])
            w = f" WHERE {' AND '.join(conds)}" if conds else ""
            return f"SELECT SUM(cost_units) FROM llm_usage_daily{w}", args
    conds, args = ["cost_usd IS NOT NULL"], []
    if since:
        conds.append("started_at >= ?")
        args.append(since)
    for k, v in match.items():
        conds.append(f"{match_column(flavor, k)} = ?")
        args.append(v)
    return f"SELECT SUM({cost_units(flavor)}) FROM llm_usage WHERE {' AND '.join(conds)}", args


def spend_by_hour_sql(flavor: str, match: Mapping[str, str],
                      since: str) -> tuple[str, list[Any]]:
    """A rolling budget's spend per hour since `since` (an hour's start), in cost_units,
    from raw rows: `(hour start, units)` rows."""
    conds, args = ["cost_usd IS NOT NULL", "started_at >= ?"], [since]
    for k, v in match.items():
        conds.append(f"{match_column(flavor, k)} = ?")
        args.append(v)
    hour = "substr(started_at, 1, 13) || ':00:00.000Z'"
    return (f"SELECT {hour}, SUM({cost_units(flavor)}) FROM llm_usage "
            f"WHERE {' AND '.join(conds)} GROUP BY {hour}", args)


# --- consumer keys (both backends) ---
def key_calls_sql(flavor: str, key_id: str, since: str) -> tuple[str, list[Any]]:
    """How many calls a consumer key made since `since`, and their cost in cost_units."""
    return (f"SELECT COUNT(*), SUM({cost_units(flavor)}) FROM llm_usage "
            f"WHERE consumer_key = ? AND started_at >= ?", [key_id, since])


# Each key's id and its last call's start (NULL: it made none).
KEYS_LAST_USED = ("SELECT k.id, (SELECT MAX(u.started_at) FROM llm_usage u "
                  "WHERE u.consumer_key = k.id) FROM tb_keys k")
