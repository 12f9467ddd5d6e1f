"""A batch's roll-up on the SQLite ledger, summed in Python: `fold(rows)` sums a batch of
new rows per period and dimensions for each roll-up (hourly, daily) in one pass, as
`schema.rollup_upsert` would in SQL, and `ROLLUP_ADD` adds those sums to the roll-up
tables. When a batch held rows the ledger had already (a replay), or a cost only SQLite's own
rounding can turn into units, `ROLLUP_NEW` sums the rows past an id in SQL instead. Pure
code and SQL text: the writer (`sqlite._write`) runs them in its transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from proxy.backends.schema import (
    COST_SCALE,
    COUNTERS,
    MEASURES,
    ROLLUP_DIMS,
    ROLLUPS,
    rollup_add,
    rollups,
)
from proxy.record import COLUMNS

__all__ = ["ROLLUP_ADD", "ROLLUP_NEW", "fold"]

ROLLUP_NEW = rollups("sqlite", "llm_usage", "WHERE id > ?")
ROLLUP_ADD = [(rollup_add(table), n) for table, _, n in ROLLUPS]
_STARTED, _COST, _SOURCE, _OUTCOME, _LIST = (COLUMNS.index(c) for c in (
    "started_at", "cost_usd", "usage_source", "outcome", "list_cost_usd"))
_DIMS = tuple(COLUMNS.index(d) for d in ROLLUP_DIMS)
_COUNTERS = tuple(enumerate((COLUMNS.index(c) for c in COUNTERS), start=1))
_UNITS, _PRICED, _UNPRICED, _ESTIMATED, _PENDING, _LIST_UNITS = (
    MEASURES.index(m) for m in ("cost_units", "priced_calls", "unpriced_calls",
                                "estimated_calls", "pending_calls", "list_cost_units"))
_EXACT = 4503599627370496.0  # 2**52: SQLite's ROUND() is plain arithmetic up to here


def _cost_units(cost: Any) -> int | None:
    """CAST(ROUND(cost_usd * COST_SCALE) AS INTEGER) as SQLite computes it (the same double
    product, rounded half away from zero); None where that is not plain arithmetic."""
    r = float(cost) * COST_SCALE
    if not -_EXACT <= r <= _EXACT:  # NaN too
        return None
    return int(r + (-0.5 if r < 0 else 0.5))


def fold(rows: Sequence[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]] | None:
    """A batch of new rows summed per period and dimensions, for each roll-up (hourly,
    daily): what `rollup_upsert` computes in SQL, here with one GROUP BY pass in Python
    instead of two in SQLite. None if a row's cost needs SQLite's own rounding."""
    hours: dict[tuple[Any, ...], list[int]] = {}
    for row in rows:
        cost, listed = row[_COST], row[_LIST]
        if listed is None:  # schema.LIST_COST
            listed = cost
        units = list_units = 0
        if cost is not None:
            got = _cost_units(cost)
            if got is None:
                return None
            units = got
        if listed is not None:
            got = _cost_units(listed)
            if got is None:
                return None
            list_units = got
        key = (row[_STARTED][:13], *["" if row[i] is None else row[i] for i in _DIMS])
        m = hours.get(key)
        if m is None:
            m = hours[key] = [0] * len(MEASURES)
        m[0] += 1
        for j, i in _COUNTERS:
            if row[i]:
                m[j] += row[i]
        m[_LIST_UNITS] += list_units
        if cost is not None:
            m[_UNITS] += units
            m[_PRICED] += 1
        elif row[_SOURCE] != "pending" and (row[_OUTCOME] == "ok"
                                            or row[_SOURCE] != "none"):  # schema.UNPRICED
            m[_UNPRICED] += 1
        if row[_SOURCE] == "pending":  # schema.PENDING: not known yet, never unpriced
            m[_PENDING] += 1
        if row[_SOURCE] in ("estimated", "partial"):
            m[_ESTIMATED] += 1
    out = []
    for _, _, n in ROLLUPS:
        periods: dict[tuple[Any, ...], list[int]] = {}
        for key, m in hours.items():
            k = (key[0][:n], *key[1:])
            p = periods.get(k)
            if p is None:
                periods[k] = list(m)
            else:
                for j, v in enumerate(m):
                    p[j] += v
        out.append([(*k, *m) for k, m in periods.items()])
    return out
