"""Named, ordered schema migrations for the ledger; `PRAGMA user_version` is the version."""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

MIGRATIONS: list[tuple[str, str]] = [
    ("create llm_usage", """
CREATE TABLE IF NOT EXISTS llm_usage (
    id INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL UNIQUE,
    started_at TEXT NOT NULL,
    ended_at TEXT NOT NULL,
    duration_ms REAL,
    ttft_ms REAL,
    upstream TEXT,
    dialect TEXT,
    operation TEXT,
    method TEXT,
    path TEXT,
    request_model TEXT,
    response_model TEXT,
    model TEXT,
    stream INTEGER,
    status_code INTEGER,
    outcome TEXT NOT NULL,
    input_tokens INTEGER,
    cache_read_tokens INTEGER,
    cache_write_tokens INTEGER,
    output_tokens INTEGER,
    reasoning_tokens INTEGER,
    total_tokens INTEGER,
    usage_source TEXT NOT NULL,
    estimator TEXT,
    cost_usd REAL,
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
);
CREATE INDEX IF NOT EXISTS llm_usage_started ON llm_usage (started_at);
CREATE INDEX IF NOT EXISTS llm_usage_agent ON llm_usage (agent, started_at);
CREATE INDEX IF NOT EXISTS llm_usage_session ON llm_usage (session, started_at);
CREATE INDEX IF NOT EXISTS llm_usage_run ON llm_usage (run, started_at);
CREATE INDEX IF NOT EXISTS llm_usage_model ON llm_usage (model, started_at);
"""),
    ("every billed dimension: served tier, priced units, batch id", """
ALTER TABLE llm_usage ADD COLUMN service_tier TEXT;
ALTER TABLE llm_usage ADD COLUMN priced_units TEXT;
ALTER TABLE llm_usage ADD COLUMN batch_id TEXT;
"""),
]
