"""The ledger's schema for both backends, as named, ordered migrations, and the SQL both
share: the hourly roll-up and how a batch of new rows is folded into it.

The roll-up (`llm_usage_hourly`) holds, per hour and per combination of the report
dimensions (`ROLLUP_DIMS`), the same sums a report computes from raw rows. Cost is summed as
whole units of 1e-10 USD (`cost_units`), so a total is the same integer however the rows
are grouped: roll-up hours plus raw edges equal the raw rows exactly. A NULL dimension is
kept as '' (a primary key cannot hold NULL), and reports read both sides through
NULLIF(x, '') alike.
"""

from __future__ import annotations

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

# --- budget reservation (`tb_reserve`) ---
# `tb_reserve` is defined by three migrations (fleet, rolling windows, one snapshot) that
# differ only in how a budget's spent and held amounts are read: each migration passes its
# read, and the rest of the function is this one text (each migration's SQL is unchanged).
_RESERVE_HEAD = """
CREATE OR REPLACE FUNCTION tb_reserve(p_names TEXT[], p_limits NUMERIC[], p_windows TEXT[],
                                      p_call TEXT, p_worst NUMERIC, p_replica TEXT,
                                      p_stale_seconds DOUBLE PRECISION)
RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
  i INTEGER;
  spent NUMERIC;
  held NUMERIC;
BEGIN
  -- one budget at a time across the fleet; callers pass names sorted (no deadlock)
  FOR i IN 1 .. coalesce(array_length(p_names, 1), 0) LOOP
    PERFORM pg_advisory_xact_lock(hashtext('tokenbooth.budget'), hashtext(p_names[i]));
  END LOOP;
  -- what a replica that stopped heartbeating still holds is released
  DELETE FROM tb_reservation r WHERE r.budget = ANY (p_names) AND NOT EXISTS (
    SELECT 1 FROM tb_replica p WHERE p.id = r.replica
      AND p.seen_at > now() - make_interval(secs => p_stale_seconds));
  FOR i IN 1 .. coalesce(array_length(p_names, 1), 0) LOOP
"""
_RESERVE_TAIL = """
    IF spent >= p_limits[i] OR spent + held + p_worst > p_limits[i] THEN
      RETURN p_names[i];
    END IF;
  END LOOP;
  IF p_worst > 0 THEN
    INSERT INTO tb_reservation (call_id, budget, window_start, amount, replica)
      SELECT p_call, n, w, p_worst, p_replica FROM unnest(p_names, p_windows) AS t(n, w)
      ON CONFLICT DO NOTHING;
  END IF;
  RETURN NULL;
END $$;
"""


def _reserve_fn(read: str) -> str:
    """`tb_reserve` with `read` (from a newline: it sets `spent` and `held` for budget i)."""
    return _RESERVE_HEAD[1:] + read[1:] + _RESERVE_TAIL[1:]
# --- end budget reservation ---


# --- layered budgets and notices (issue 20) ---
# A rolling budget (`tb_budget.period` = 'rolling:<hours>') keeps its spend per hour in
# `tb_budget_spend` (window_start = the hour), and its spend is the sum of the hours from
# its window's start on; its open reservations are all of its own (they may have been made
# in the hour before). A calendar budget reads its one window start, as before.
_ROLLING_NAME = "rolling budget windows: spend per hour"
_ROLLING_PG = """
CREATE OR REPLACE FUNCTION tb_window_start(period TEXT, ts TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN period = 'day' THEN substr(ts, 1, 10) || 'T00:00:00.000Z'
    WHEN period = 'week' THEN to_char(date_trunc('week', substr(ts, 1, 10)::date), 'YYYY-MM-DD')
                     || 'T00:00:00.000Z'
    WHEN period = 'month' THEN substr(ts, 1, 7) || '-01T00:00:00.000Z'
    WHEN period LIKE 'rolling:%' THEN substr(ts, 1, 13) || ':00:00.000Z'
    ELSE '' END
$$;
CREATE OR REPLACE FUNCTION tb_budget_rolling(p_name TEXT) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
  SELECT EXISTS (SELECT 1 FROM tb_budget b WHERE b.name = p_name AND b.period LIKE 'rolling:%')
$$;
CREATE OR REPLACE FUNCTION tb_budget_spent(p_name TEXT, p_start TEXT) RETURNS NUMERIC
LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN tb_budget_rolling(p_name)
    THEN (SELECT coalesce(sum(s.spent), 0) FROM tb_budget_spend s
          WHERE s.budget = p_name AND s.window_start >= p_start)
    ELSE (SELECT coalesce(max(s.spent), 0) FROM tb_budget_spend s
          WHERE s.budget = p_name AND s.window_start = p_start) END
$$;
CREATE OR REPLACE FUNCTION tb_budget_held(p_name TEXT, p_start TEXT) RETURNS NUMERIC
LANGUAGE sql STABLE AS $$
  SELECT coalesce(sum(r.amount), 0) FROM tb_reservation r
  WHERE r.budget = p_name AND (r.window_start = p_start OR tb_budget_rolling(p_name))
$$;
""" + _reserve_fn("""
    spent := tb_budget_spent(p_names[i], p_windows[i]);
    held := tb_budget_held(p_names[i], p_windows[i]);
""")

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
# --- end layered budgets and notices ---


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
    ("fleet: budgets, spend, reservations, replicas, install secret", """
CREATE TABLE IF NOT EXISTS tb_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tb_budget (
    name TEXT PRIMARY KEY, period TEXT NOT NULL, match JSONB NOT NULL);
CREATE TABLE IF NOT EXISTS tb_budget_spend (
    budget TEXT NOT NULL, window_start TEXT NOT NULL, spent NUMERIC NOT NULL,
    PRIMARY KEY (budget, window_start));
CREATE TABLE IF NOT EXISTS tb_replica (
    id TEXT PRIMARY KEY, seen_at TIMESTAMPTZ NOT NULL, watchers INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS tb_reservation (
    call_id TEXT NOT NULL, budget TEXT NOT NULL, window_start TEXT NOT NULL,
    amount NUMERIC NOT NULL, replica TEXT NOT NULL, PRIMARY KEY (call_id, budget));
CREATE INDEX IF NOT EXISTS tb_reservation_budget ON tb_reservation (budget, window_start);
CREATE OR REPLACE FUNCTION tb_window_start(period TEXT, ts TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE period
    WHEN 'day' THEN substr(ts, 1, 10) || 'T00:00:00.000Z'
    WHEN 'week' THEN to_char(date_trunc('week', substr(ts, 1, 10)::date), 'YYYY-MM-DD')
                     || 'T00:00:00.000Z'
    WHEN 'month' THEN substr(ts, 1, 7) || '-01T00:00:00.000Z'
    ELSE '' END
$$;
""" + _reserve_fn("""
    SELECT coalesce(max(s.spent), 0) INTO spent FROM tb_budget_spend s
      WHERE s.budget = p_names[i] AND s.window_start = p_windows[i];
    SELECT coalesce(sum(r.amount), 0) INTO held FROM tb_reservation r
      WHERE r.budget = p_names[i] AND r.window_start = p_windows[i];
""")),
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
    (_ROLLING_NAME, _ROLLING_PG),
    (_NOTICES_NAME, _notices_table("postgresql")),
    # --- end layered budgets and notices ---
]

# --- rate limits (issue 20, item 2) ---
# A fleet's rate limits: a sliding window log per limit (`tb_rate_event`: one row per call
# admitted in the last hour, with the tokens and dollars it holds, settled by the call's
# row write), and `tb_admit`, admission's one round trip when a rate limit applies: it
# decides the call's rate limits (under a lock per limit, taken before the budgets' locks
# by every caller: no deadlock) and, if they admit, its budgets (`tb_reserve`), and
# reserves both or neither. It answers JSON: the budget that refused (`budget`), and each
# limit's figures before this call (`limits`: requests, tokens and dollars in the window,
# the newest admission's age, the seconds until the call fits, `never` when it cannot,
# `refused` when it refuses the call), and `refused` when a rate limit did.
_RATES_NAME = "rate limits: sliding window log and tb_admit"
_RATES = """
CREATE TABLE IF NOT EXISTS tb_rate_event (
    call_id TEXT NOT NULL, rate_limit TEXT NOT NULL, at TIMESTAMPTZ NOT NULL,
    tokens BIGINT NOT NULL, usd NUMERIC NOT NULL, replica TEXT NOT NULL,
    PRIMARY KEY (call_id, rate_limit));
CREATE INDEX IF NOT EXISTS tb_rate_event_at ON tb_rate_event (rate_limit, at);
CREATE OR REPLACE FUNCTION tb_admit(p_names TEXT[], p_limits NUMERIC[], p_windows TEXT[],
                                    p_call TEXT, p_worst NUMERIC, p_replica TEXT,
                                    p_stale_seconds DOUBLE PRECISION,
                                    r_names TEXT[], r_rpm BIGINT[], r_tpm BIGINT[],
                                    r_usd_minute NUMERIC[], r_usd_hour NUMERIC[],
                                    r_tokens BIGINT, r_usd NUMERIC)
RETURNS JSONB LANGUAGE plpgsql AS $$
DECLARE
  i INTEGER;
  now_ts TIMESTAMPTZ;
  minute_ago TIMESTAMPTZ;
  n BIGINT;
  tok NUMERIC;
  um NUMERIC;
  uh NUMERIC;
  newest TIMESTAMPTZ;
  wait DOUBLE PRECISION;
  w DOUBLE PRECISION;
  never BOOLEAN;
  this BOOLEAN;
  refused BOOLEAN := false;
  figures JSONB := '[]'::jsonb;
  budget TEXT;
BEGIN
  FOR i IN 1 .. coalesce(array_length(r_names, 1), 0) LOOP
    PERFORM pg_advisory_xact_lock(hashtext('tokenbooth.rate'), hashtext(r_names[i]));
  END LOOP;
  now_ts := clock_timestamp();  -- after the locks: admissions are in time order
  minute_ago := now_ts - interval '60 seconds';
  DELETE FROM tb_rate_event WHERE rate_limit = ANY (r_names)
    AND at <= now_ts - interval '3600 seconds';
  FOR i IN 1 .. coalesce(array_length(r_names, 1), 0) LOOP
    SELECT count(*), coalesce(sum(tokens), 0), coalesce(sum(usd), 0), max(at)
      INTO n, tok, um, newest FROM tb_rate_event
      WHERE rate_limit = r_names[i] AND at > minute_ago;
    SELECT coalesce(sum(usd), 0) INTO uh FROM tb_rate_event
      WHERE rate_limit = r_names[i] AND r_usd_hour[i] IS NOT NULL;
    wait := 0;
    this := false;
    never := (r_tpm[i] IS NOT NULL AND r_tokens > r_tpm[i])
      OR (r_usd_minute[i] IS NOT NULL AND r_usd > r_usd_minute[i])
      OR (r_usd_hour[i] IS NOT NULL AND r_usd > r_usd_hour[i]);
    IF r_rpm[i] IS NOT NULL AND n + 1 > r_rpm[i] THEN
      this := true;
      SELECT extract(epoch FROM at + interval '60 seconds' - now_ts) INTO w
        FROM tb_rate_event WHERE rate_limit = r_names[i] AND at > minute_ago
        ORDER BY at, call_id OFFSET n - r_rpm[i] LIMIT 1;
      wait := greatest(wait, w);
    END IF;
    IF r_tpm[i] IS NOT NULL AND tok + r_tokens > r_tpm[i] THEN
      this := true;
      SELECT extract(epoch FROM at + interval '60 seconds' - now_ts) INTO w FROM (
        SELECT at, sum(tokens) OVER (ORDER BY at, call_id) AS freed FROM tb_rate_event
        WHERE rate_limit = r_names[i] AND at > minute_ago) x
        WHERE freed >= tok + r_tokens - r_tpm[i] ORDER BY at LIMIT 1;
      wait := greatest(wait, coalesce(w, 0));
    END IF;
    IF r_usd_minute[i] IS NOT NULL AND um + r_usd > r_usd_minute[i] THEN
      this := true;
      SELECT extract(epoch FROM at + interval '60 seconds' - now_ts) INTO w FROM (
        SELECT at, sum(usd) OVER (ORDER BY at, call_id) AS freed FROM tb_rate_event
        WHERE rate_limit = r_names[i] AND at > minute_ago) x
        WHERE freed >= um + r_usd - r_usd_minute[i] ORDER BY at LIMIT 1;
      wait := greatest(wait, coalesce(w, 0));
    END IF;
    IF r_usd_hour[i] IS NOT NULL AND uh + r_usd > r_usd_hour[i] THEN
      this := true;
      SELECT extract(epoch FROM at + interval '3600 seconds' - now_ts) INTO w FROM (
        SELECT at, sum(usd) OVER (ORDER BY at, call_id) AS freed FROM tb_rate_event
        WHERE rate_limit = r_names[i]) x
        WHERE freed >= uh + r_usd - r_usd_hour[i] ORDER BY at LIMIT 1;
      wait := greatest(wait, coalesce(w, 0));
    END IF;
    figures := figures || jsonb_build_object(
      'name', r_names[i], 'requests', n, 'tokens', tok, 'usd_minute', um, 'usd_hour', uh,
      'newest_age', extract(epoch FROM now_ts - newest), 'retry', wait, 'never', never,
      'refused', this);
    refused := refused OR this;
  END LOOP;
  IF refused THEN
    RETURN jsonb_build_object('refused', true, 'limits', figures);
  END IF;
  budget := tb_reserve(p_names, p_limits, p_windows, p_call, p_worst, p_replica,
                       p_stale_seconds);
  IF budget IS NOT NULL THEN
    RETURN jsonb_build_object('budget', budget, 'limits', figures);
  END IF;
  INSERT INTO tb_rate_event (call_id, rate_limit, at, tokens, usd, replica)
    SELECT p_call, r, now_ts, r_tokens, r_usd, p_replica FROM unnest(r_names) AS t(r)
    ON CONFLICT DO NOTHING;
  RETURN jsonb_build_object('limits', figures);
END $$;
"""
PG_MIGRATIONS.append((_RATES_NAME, _RATES))
# --- end rate limits ---

# --- one snapshot for a budget's spent and held (issue 20 review) ---
# A call's row moves its cost from `tb_reservation` to `tb_budget_spend` in one statement,
# without the budget's lock. Read in two statements (two snapshots under READ COMMITTED),
# a row committing between them would be counted in neither and the budget over-admitted:
# `tb_reserve` reads both in one statement, so a finished call is counted exactly once.
_ONE_SNAPSHOT_NAME = "budgets: spent and held read in one snapshot"
_ONE_SNAPSHOT = "\n" + _reserve_fn("""
    -- one statement: one snapshot (a row moving a call from held to spent is seen once)
    SELECT tb_budget_spent(p_names[i], p_windows[i]), tb_budget_held(p_names[i], p_windows[i])
      INTO spent, held;
""")
# `tb_admit`'s rate-limit reads need no such change: a call's rate event stays in
# `tb_rate_event` (its row only settles the amounts in place), so every snapshot counts it.
PG_MIGRATIONS.append((_ONE_SNAPSHOT_NAME, _ONE_SNAPSHOT))
# --- end one snapshot ---
