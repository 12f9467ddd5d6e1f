"""The SQL only a PostgreSQL ledger runs: what a fleet of proxies shares to hold budgets
and rate limits together. It owns the fleet tables (install secret, budget definitions,
spend per window, reservations, replicas), `tb_window_start`, the budget reservation
function `tb_reserve` in each of its versions (fleet, rolling windows, one snapshot), the
rolling windows' spent and held reads, and the rate limits' sliding window log
(`tb_rate_event`) with `tb_admit`. Each text is one migration's SQL, listed in order in
`schema.PG_MIGRATIONS`; none may change once shipped (migrations replay).
"""

from __future__ import annotations

__all__ = ["FLEET", "FLEET_NAME", "ONE_SNAPSHOT", "ONE_SNAPSHOT_NAME", "RATES", "RATES_NAME",
           "ROLLING_NAME", "ROLLING_PG"]


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


# --- fleet: what the replicas share ---
FLEET_NAME = "fleet: budgets, spend, reservations, replicas, install secret"
FLEET = """
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
""")
# --- end fleet ---


# --- layered budgets (issue 20) ---
# A rolling budget (`tb_budget.period` = 'rolling:<hours>') keeps its spend per hour in
# `tb_budget_spend` (window_start = the hour), and its spend is the sum of the hours from
# its window's start on; its open reservations are all of its own (they may have been made
# in the hour before). A calendar budget reads its one window start, as before.
ROLLING_NAME = "rolling budget windows: spend per hour"
ROLLING_PG = """
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
# --- end layered budgets ---


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
RATES_NAME = "rate limits: sliding window log and tb_admit"
RATES = """
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
# --- end rate limits ---


# --- one snapshot for a budget's spent and held (issue 20 review) ---
# A call's row moves its cost from `tb_reservation` to `tb_budget_spend` in one statement,
# without the budget's lock. Read in two statements (two snapshots under READ COMMITTED),
# a row committing between them would be counted in neither and the budget over-admitted:
# `tb_reserve` reads both in one statement, so a finished call is counted exactly once.
ONE_SNAPSHOT_NAME = "budgets: spent and held read in one snapshot"
ONE_SNAPSHOT = "\n" + _reserve_fn("""
    -- one statement: one snapshot (a row moving a call from held to spent is seen once)
    SELECT tb_budget_spent(p_names[i], p_windows[i]), tb_budget_held(p_names[i], p_windows[i])
      INTO spent, held;
""")
# `tb_admit`'s rate-limit reads need no such change: a call's rate event stays in
# `tb_rate_event` (its row only settles the amounts in place), so every snapshot counts it.
# --- end one snapshot ---
