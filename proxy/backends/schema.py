"""The ledger's schema for both backends, as named, ordered migrations, and the SQL both
share: the hourly roll-up and how a batch of new rows is folded into it.

The roll-up (`llm_usage_hourly`) holds, per hour and per combination of the report
dimensions (`ROLLUP_DIMS`), the same sums a report computes from raw rows. Cost is summed as
whole units of 1e-10 USD (`cost_units`), so a total is the same integer however the rows
are grouped: roll-up hours plus raw edges equal the raw rows exactly. A NULL dimension is
kept as '' (a primary key cannot hold NULL), and reports read both sides through
NULLIF(x, '') alike.

The PostgreSQL-only SQL a fleet shares (budget reservation, rolling windows, rate limits)
is in `fleet_schema`; its migrations are listed here, in order, with the rest.
"""

from __future__ import annotations

from proxy.backends.fleet_schema import (
    FLEET,
    FLEET_NAME,
    ONE_SNAPSHOT,
    ONE_SNAPSHOT_NAME,
    RATES,
    RATES_NAME,
    ROLLING_NAME,
    ROLLING_PG,
)

__all__ = ["COST_SCALE", "COUNTERS", "ESTIMATED", "KEY_COLUMNS", "LIST_COST", "MEASURES",
           "PENDING", "PG_MIGRATIONS", "ROLLUPS", "ROLLUP_DIMS", "SQLITE_MIGRATIONS", "UNPRICED",
           "cost_units", "rollup_add", "rollup_upsert", "rollups"]

COUNTERS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
            "reasoning_tokens", "total_tokens")
ROLLUP_DIMS = ("agent", "model", "upstream", "operation", "end_user", "client", "outcome")
COST_SCALE = 10_000_000_000  # cost_units per USD
# Per raw row: what it adds to its roll-up row (the same expressions a report uses).
# Unpriced (CallRecord.unpriced): no cost, and the call succeeded upstream (audio, speech,
# realtime, retrievals: whatever the route) or carried usage (an aborted stream's tokens).
# A pending background response is not unpriced: its usage is not known yet (PENDING).
UNPRICED = ("CASE WHEN cost_usd IS NULL AND (outcome = 'ok' OR usage_source != 'none') "
            "AND usage_source != 'pending' THEN 1 ELSE 0 END")
# A background response's create: its usage is recorded in a row of its own once seen
# finished; until then its cost is not known (never $0).
PENDING = "CASE WHEN usage_source = 'pending' THEN 1 ELSE 0 END"
ESTIMATED = "CASE WHEN usage_source IN ('estimated', 'partial') THEN 1 ELSE 0 END"


# A row's list cost: a NULL one beside a cost is that cost. A replica from before
# pricing.adjustments writes no list_cost_usd into a PostgreSQL ledger another replica has
# migrated; it charged its list price, so its cost is its list cost (as the migration says
# of the rows before it).
LIST_COST = "COALESCE(list_cost_usd, cost_usd)"


def cost_units(flavor: str, col: str = "cost_usd") -> str:
    if flavor == "postgresql":
        return f"round({col} * {COST_SCALE}::float8)::bigint"
    return f"CAST(ROUND({col} * {COST_SCALE}) AS INTEGER)"


# The roll-up's measures as the first migrations created them (frozen: migrations replay),
# and as they are now.
_MEASURES_V1 = ("calls", *COUNTERS, "cost_units", "priced_calls", "unpriced_calls",
                "estimated_calls")
MEASURES = (*_MEASURES_V1, "pending_calls", "list_cost_units")
# (table, key column, length of the started_at prefix that is its key)
ROLLUPS = (("llm_usage_hourly", "hour", 13), ("llm_usage_daily", "day", 10))


def rollup_upsert(flavor: str, source: str, where: str = "", sign: str = "",
                  table: str = "llm_usage_hourly",
                  measures: tuple[str, ...] = MEASURES) -> str:
    """INSERT the roll-up of `source`'s rows (a table or a CTE) into `table`, adding to the
    periods it holds already. `sign` '-' takes them out again (re-pricing swaps a row's old
    cost for its new). A row's list cost is LIST_COST when added; taken out, a NULL one is
    0, as the replica from before list costs that wrote it added it (none adds it now)."""
    _, key, n = next(r for r in ROLLUPS if r[0] == table)
    dims = ", ".join(ROLLUP_DIMS)
    keys = ", ".join(f"COALESCE({d}, '')" for d in ROLLUP_DIMS)
    listed = "list_cost_usd" if sign else LIST_COST
    sums = ", ".join([f"{sign}COUNT(*)",
                      *(f"{sign}SUM(COALESCE({c}, 0))" for c in COUNTERS),
                      f"{sign}COALESCE(SUM({cost_units(flavor)}), 0)",
                      f"{sign}COUNT(cost_usd)", f"{sign}SUM({UNPRICED})",
                      f"{sign}SUM({ESTIMATED})", f"{sign}SUM({PENDING})",
                      f"{sign}COALESCE(SUM({cost_units(flavor, listed)}), 0)"]
                     [:len(measures)])
    return (f"INSERT INTO {table} ({key}, {dims}, {', '.join(measures)}) "
            f"SELECT substr(started_at, 1, {n}), {keys}, {sums} FROM {source} "
            f"{where or 'WHERE true'} GROUP BY {_group()} {_on_conflict(table, key, measures)}")


def rollup_add(table: str) -> str:
    """INSERT one period's sums (key, dimensions, measures as parameters) into `table`,
    adding to what the period holds already."""
    key = next(r[1] for r in ROLLUPS if r[0] == table)
    n = 1 + len(ROLLUP_DIMS) + len(MEASURES)
    return (f"INSERT INTO {table} ({key}, {', '.join(ROLLUP_DIMS)}, {', '.join(MEASURES)}) "
            f"VALUES ({', '.join('?' * n)}) {_on_conflict(table, key)}")


def rollups(flavor: str, source: str, where: str = "", sign: str = "") -> list[str]:
    """The upserts that keep every roll-up (hourly, daily) in step with `source`'s rows."""
    return [rollup_upsert(flavor, source, where, sign, table) for table, _, _ in ROLLUPS]


def _group() -> str:
    return ", ".join(str(i) for i in range(1, len(ROLLUP_DIMS) + 2))


def _on_conflict(table: str, key: str, measures: tuple[str, ...] = MEASURES) -> str:
    update = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in measures)
    return f"ON CONFLICT ({key}, {', '.join(ROLLUP_DIMS)}) DO UPDATE SET {update}"


def _rollup_table(flavor: str, table: str = "llm_usage_hourly", key: str = "hour",
                  measures: tuple[str, ...] = _MEASURES_V1) -> str:
    int_type = "BIGINT" if flavor == "postgresql" else "INTEGER"
    cols = ",\n    ".join([*(f"{d} TEXT NOT NULL" for d in ROLLUP_DIMS),
                           *(f"{m} {int_type} NOT NULL" for m in measures)])
    tail = " WITHOUT ROWID" if flavor == "sqlite" else ""
    return (f"CREATE TABLE IF NOT EXISTS {table} (\n    {key} TEXT NOT NULL,\n    "
            f"{cols},\n    PRIMARY KEY ({key}, {', '.join(ROLLUP_DIMS)})\n){tail};\n")


def _daily_table(flavor: str) -> str:
    """The daily roll-up, filled from the hourly one (which outlives retention)."""
    dims = ", ".join(ROLLUP_DIMS)
    v1 = _MEASURES_V1
    return (_rollup_table(flavor, "llm_usage_daily", "day")
            + f"INSERT INTO llm_usage_daily (day, {dims}, {', '.join(v1)}) "
            f"SELECT substr(hour, 1, 10), {dims}, "
            + ", ".join(f"SUM({m})" for m in v1)
            + f" FROM llm_usage_hourly WHERE true GROUP BY {_group()} "
            + _on_conflict("llm_usage_daily", "day", v1) + ";\n")


_COLUMNS_V1 = """
    call_id TEXT NOT NULL UNIQUE,
    started_at TEXT NOT NULL,
    ended_at TEXT NOT NULL,
    duration_ms {real},
    ttft_ms {real},
    upstream TEXT,
    dialect TEXT,
    operation TEXT,
    method TEXT,
    path TEXT,
    request_model TEXT,
    response_model TEXT,
    model TEXT,
    stream {int},
    status_code {int},
    outcome TEXT NOT NULL,
    input_tokens {int},
    cache_read_tokens {int},
    cache_write_tokens {int},
    output_tokens {int},
    reasoning_tokens {int},
    total_tokens {int},
    usage_source TEXT NOT NULL,
    estimator TEXT,
    cost_usd {real},
    price_source TEXT,
    agent TEXT,
    session TEXT,
    run TEXT,
    tags TEXT,
    end_user TEXT,
    client TEXT,
    key_id TEXT,
    upstream_request_id TEXT,
    error TEXT,
    usage_raw TEXT
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS llm_usage_started ON llm_usage (started_at);
CREATE INDEX IF NOT EXISTS llm_usage_agent ON llm_usage (agent, started_at);
CREATE INDEX IF NOT EXISTS llm_usage_session ON llm_usage (session, started_at);
CREATE INDEX IF NOT EXISTS llm_usage_run ON llm_usage (run, started_at);
CREATE INDEX IF NOT EXISTS llm_usage_model ON llm_usage (model, started_at);
"""
_V2 = """
ALTER TABLE llm_usage ADD COLUMN service_tier TEXT;
ALTER TABLE llm_usage ADD COLUMN priced_units TEXT;
ALTER TABLE llm_usage ADD COLUMN batch_id TEXT;
"""
_ROLLUP = "hourly roll-up by the report dimensions"
_DAILY = "daily roll-up (long ranges read a row per day, not per hour)"
_EXPORT = "export cursors: each webhook delivers from the ledger, after its cursor"
# Roll-ups built before the unpriced rule counted an ok call only when it had usage. Within
# one roll-up row every call shares its outcome, so the new count is exact from the row
# itself: an ok row's unpriced calls are its calls without a cost; others are unchanged.
_UNPRICED_OK_NAME = "unpriced: every ok call without a cost, whatever its usage"
_UNPRICED_OK = "".join(f"UPDATE {t} SET unpriced_calls = calls - priced_calls "
                       "WHERE outcome = 'ok';\n" for t, _, _ in ROLLUPS)
_QUOTA_NAME = "quota: the provider's rate-limit and quota headers on each response"
_QUOTA = "ALTER TABLE llm_usage ADD COLUMN quota TEXT;\n"
# Pending background responses: counted apart (no row held one before, so 0 is exact).
_PENDING_NAME = "pending: background responses whose usage is not known yet"


def _pending_column(flavor: str) -> str:
    int_type, exists = ("BIGINT", "IF NOT EXISTS ") if flavor == "postgresql" else ("INTEGER", "")
    return "".join(f"ALTER TABLE {t} ADD COLUMN {exists}pending_calls {int_type} NOT NULL "
                   "DEFAULT 0;\n" for t, _, _ in ROLLUPS)


# --- list cost (pricing.adjustments): the list price beside the charged cost ---
# Every row written before adjustments existed was charged its list price, so the list
# cost is its cost; and within a roll-up row the list cost units are its cost units,
# exactly (same rows, same rounding), retention or not.
_LIST_COST_NAME = "list cost: the list price beside the charged cost (pricing.adjustments)"


def _list_cost(flavor: str) -> str:
    real, int_type, exists = (("DOUBLE PRECISION", "BIGINT", "IF NOT EXISTS ")
                              if flavor == "postgresql" else ("REAL", "INTEGER", ""))
    return (f"ALTER TABLE llm_usage ADD COLUMN {exists}list_cost_usd {real};\n"
            "UPDATE llm_usage SET list_cost_usd = cost_usd;\n"
            + "".join(f"ALTER TABLE {t} ADD COLUMN {exists}list_cost_units {int_type} NOT NULL "
                      f"DEFAULT 0;\nUPDATE {t} SET list_cost_units = cost_units;\n"
                      for t, _, _ in ROLLUPS))
# --- end list cost ---


# --- consumer keys (issue 20) ---
# Keys issued at run time: stored as the HMAC of their secret (keyed with the install's
# secret), never the secret. `tb_keys_version` counts every change: a replica (or a
# process serving a SQLite ledger the CLI writes) reloads its keys when it moves. Each row
# names the key it was made with (`consumer_key`: the key's id), so a budget can match it.
_KEYS_NAME = "consumer keys: issued at run time, stored hashed; each call's consumer_key"


def _keys(flavor: str) -> str:
    exists = "IF NOT EXISTS " if flavor == "postgresql" else ""
    return f"""
ALTER TABLE llm_usage ADD COLUMN {exists}consumer_key TEXT;
CREATE INDEX IF NOT EXISTS llm_usage_consumer_key ON llm_usage (consumer_key, started_at);
CREATE TABLE IF NOT EXISTS tb_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, last4 TEXT NOT NULL,
    tags TEXT NOT NULL, upstreams TEXT NOT NULL, models TEXT NOT NULL, expires_at TEXT,
    limits TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE IF NOT EXISTS tb_keys_version (
    id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL);
INSERT INTO tb_keys_version (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING;
"""


KEY_COLUMNS = ("id", "name", "hash", "last4", "tags", "upstreams", "models", "expires_at",
               "limits", "created_at", "revoked_at")
# --- end consumer keys ---

_REQUEST_ID_INDEX = ("CREATE INDEX IF NOT EXISTS llm_usage_request_id "
                     "ON llm_usage (upstream_request_id);\n")

# --- budget notices (issue 20) ---
# The notices' outbox: one row per (budget window, window start, threshold or forecast,
# notification sink), its `notice_key` unique, so the replica whose INSERT adds the row is
# the one that sends it; `claimed_by`/`claimed_at` say who is sending (another replica takes
# a row whose claim has gone stale), `sent_at` when the receiver took it. `sink` '' is a
# notice of a budget without sinks (shown on the page, nothing to send).
_NOTICES_NAME = "budget notices outbox"


def _notices_table(flavor: str) -> str:
    ident = ("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY" if flavor == "postgresql"
             else "INTEGER PRIMARY KEY AUTOINCREMENT")
    real = "DOUBLE PRECISION" if flavor == "postgresql" else "REAL"
    return f"""
CREATE TABLE IF NOT EXISTS tb_notice (
    id {ident},
    notice_key TEXT NOT NULL UNIQUE,
    sink TEXT NOT NULL, budget TEXT NOT NULL, window_id TEXT NOT NULL,
    window_start TEXT NOT NULL, kind TEXT NOT NULL, threshold {real},
    body TEXT NOT NULL, created_at TEXT NOT NULL,
    claimed_by TEXT, claimed_at TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, sent_at TEXT);
CREATE INDEX IF NOT EXISTS tb_notice_pending ON tb_notice (sent_at, claimed_at);
"""
# --- end budget notices ---


SQLITE_MIGRATIONS: list[tuple[str, str]] = [
    ("create llm_usage",
     "CREATE TABLE IF NOT EXISTS llm_usage (\n    id INTEGER PRIMARY KEY,"
     + _COLUMNS_V1.format(real="REAL", int="INTEGER") + ");\n" + _INDEXES),
    ("every billed dimension: served tier, priced units, batch id", _V2),
    (_ROLLUP, _rollup_table("sqlite") + rollup_upsert("sqlite", "llm_usage",
                                                      measures=_MEASURES_V1) + ";\n"
     + _REQUEST_ID_INDEX),
    (_DAILY, _daily_table("sqlite")),
    (_EXPORT, "CREATE TABLE IF NOT EXISTS tb_export_cursor (\n"
     "    sink TEXT PRIMARY KEY, after_id INTEGER NOT NULL);\n"),
    (_UNPRICED_OK_NAME, _UNPRICED_OK),
    (_QUOTA_NAME, _QUOTA),
    (_PENDING_NAME, _pending_column("sqlite")),
    (_LIST_COST_NAME, _list_cost("sqlite")),
    (_KEYS_NAME, _keys("sqlite")),
    (_NOTICES_NAME, _notices_table("sqlite")),  # layered budgets and notices (issue 20)
]

# PostgreSQL: the same columns and meaning (timestamps are the same sortable ISO-8601 UTC
# text, so every query and export reads alike), plus what a fleet shares: budget
# definitions, spend per window (charged in the ledger write's own transaction),
# reservations (each held by a replica that heartbeats; a dead replica's expire), and the
# per-install secret that fingerprints keys the same on every replica.
PG_MIGRATIONS: list[tuple[str, str]] = [
    ("create llm_usage",
     "CREATE TABLE IF NOT EXISTS llm_usage (\n"
     "    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
     + _COLUMNS_V1.format(real="DOUBLE PRECISION", int="BIGINT") + ");\n" + _INDEXES),
    ("every billed dimension: served tier, priced units, batch id",
     _V2.replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS")),
    (_ROLLUP, _rollup_table("postgresql") + rollup_upsert("postgresql", "llm_usage",
                                                          measures=_MEASURES_V1) + ";\n"
     + _REQUEST_ID_INDEX),
    (FLEET_NAME, FLEET),
    (_DAILY, _daily_table("postgresql")),
    # A row's `tx` is its writing transaction's id: every transaction below the oldest one
    # still running has ended, so rows read in (tx, id) order up to that horizon are never
    # overtaken by a row that commits later (ids alone are handed out before commit).
    (_EXPORT, """
ALTER TABLE llm_usage ADD COLUMN IF NOT EXISTS tx xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS llm_usage_tx ON llm_usage (tx, id);
CREATE TABLE IF NOT EXISTS tb_export_cursor (
    sink TEXT PRIMARY KEY, tx xid8 NOT NULL, after_id BIGINT NOT NULL);
"""),
    (_UNPRICED_OK_NAME, _UNPRICED_OK),
    (_QUOTA_NAME, _QUOTA.replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS")),
    (_PENDING_NAME, _pending_column("postgresql")),
    (_LIST_COST_NAME, _list_cost("postgresql")),
    (_KEYS_NAME, _keys("postgresql")),
    # --- layered budgets and notices (issue 20) ---
    (ROLLING_NAME, ROLLING_PG),
    (_NOTICES_NAME, _notices_table("postgresql")),
    # --- end layered budgets and notices ---
    (RATES_NAME, RATES),  # rate limits (issue 20, item 2)
    (ONE_SNAPSHOT_NAME, ONE_SNAPSHOT),  # one snapshot for a budget's spent and held
]
