"""Call records for the ledger benchmark: a realistic priced chat call, fields overridden
by keyword."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from proxy.record import CallRecord

__all__ = ["bench_record"]

_BASE: dict[str, Any] = dict(
    call_id="c0", started_at="2026-11-20T10:00:00.000Z", ended_at="2026-11-20T10:00:01.000Z",
    duration_ms=1000.0, ttft_ms=None, upstream="openai", dialect="openai", operation="chat",
    method="POST", path="/openai/v1/chat/completions", request_model="gpt-4o",
    response_model="gpt-4o-2024-08-06", model="gpt-4o", stream=False, status_code=200,
    outcome="ok", input_tokens=100, cache_read_tokens=20, cache_write_tokens=0,
    output_tokens=10, reasoning_tokens=0, total_tokens=110, usage_source="reported",
    estimator=None, cost_usd=Decimal("0.001"), price_source="genai-prices", agent=None,
    session=None, run=None, tags={}, end_user=None, client=None, key_id=None,
    upstream_request_id="chatcmpl-1", error=None, usage_raw=None, input_source="reported",
    output_source="reported", list_cost_usd=Decimal("0.001"),
)


def bench_record(**overrides: Any) -> CallRecord:
    """A record; `agent`, `session`, `run` also appear in its tags, as the proxy puts them."""
    values = {**_BASE, **overrides}
    values["tags"] = {**{k: values[k] for k in ("agent", "session", "run")
                         if values[k] is not None}, **values["tags"]}
    return CallRecord(**values)
