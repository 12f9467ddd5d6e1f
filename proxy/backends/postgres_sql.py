"""The PostgreSQL backend's own statement text, beside the shared `query`, `notices` and
`schema`: `COLS`, the ledger's column list; `WRITE`, the batch write (one statement over the
rows COPYed into the per-connection `STAGE` table: the new rows, their roll-up, their
rate-limit events settled, their budget reservations released and their cost charged);
`LOCK`, the advisory lock writers take shared and migrations and budget (re)definitions
alone; and `pg()`, which spells the shared `?`-placeholder text in asyncpg's `$n`. Text
only, no I/O: the backend and its parts run it."""

from __future__ import annotations

import re

from proxy.backends.schema import rollups
from proxy.record import COLUMNS

__all__ = ["COLS", "LOCK", "STAGE", "WRITE", "pg"]

LOCK = 0x7B_0074  # advisory lock key: migrations and budget (re)definition
STAGE = "tb_incoming"
COLS = ", ".join(COLUMNS)  # the ledger's columns, in COLUMNS order, as SQL text
_CTX = ("(COALESCE(i.tags, '{{}}')::jsonb || jsonb_build_object('upstream', i.upstream, "
        "'model', i.{model}, 'client', i.client, 'key', i.consumer_key))")
# --- rate limits (issue 20, item 2): a row settles its call's rate-limit reservations to
# what it used (0 when never answered); a refused call was never admitted: it leaves the log
_RATE_SETTLE = ("UPDATE tb_rate_event e SET "
                "tokens = CASE WHEN i.status_code IS NULL THEN 0 "
                "ELSE COALESCE(i.total_tokens, 0) END, "
                "usd = CASE WHEN i.status_code IS NULL THEN 0 "
                "ELSE COALESCE(i.cost_usd::numeric, 0) END "
                "FROM ins i WHERE e.call_id = i.call_id AND i.outcome != 'rejected'")
# --- end rate limits ---
WRITE = f"""
WITH ins AS (
    INSERT INTO llm_usage ({COLS}) SELECT {COLS} FROM {STAGE}
    ON CONFLICT (call_id) DO NOTHING RETURNING *
), rated AS (
    {_RATE_SETTLE}
), unrated AS (
    DELETE FROM tb_rate_event e USING ins i WHERE e.call_id = i.call_id
    AND i.outcome = 'rejected'
), roll_h AS (
    {rollups("postgresql", "ins")[0]}
), roll_d AS (
    {rollups("postgresql", "ins")[1]}
), settled AS (
    DELETE FROM tb_reservation r USING ins WHERE r.call_id = ins.call_id
    RETURNING r.call_id, r.budget
), charged AS (
    SELECT b.name, tb_window_start(b.period, i.started_at) AS ws, i.cost_usd
    FROM ins i JOIN tb_budget b ON (
        {_CTX.format(model="model")} @> b.match
        OR {_CTX.format(model="request_model")} @> b.match
        OR EXISTS (SELECT 1 FROM settled s WHERE s.call_id = i.call_id AND s.budget = b.name))
    WHERE i.cost_usd IS NOT NULL
)
INSERT INTO tb_budget_spend (budget, window_start, spent)
SELECT name, ws, SUM(cost_usd::numeric) FROM charged GROUP BY name, ws
ON CONFLICT (budget, window_start) DO UPDATE SET spent = tb_budget_spend.spent + excluded.spent
"""
_PLACEHOLDER = re.compile(r"\?")


def pg(sql: str) -> str:
    """`?` placeholders (shared query text) as asyncpg's `$1`, `$2`, ..."""
    n = 0

    def repl(_m: re.Match[str]) -> str:
        nonlocal n
        n += 1
        return f"${n}"
    return _PLACEHOLDER.sub(repl, sql)
