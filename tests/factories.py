"""make_record() with keyword overrides, for sink tests; chat_json(), a fake upstream's
Chat Completions answer."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from proxy.record import CallRecord

_DEFAULTS: dict[str, Any] = dict(
    call_id="c0", started_at="2026-11-20T10:00:00.000Z", ended_at="2026-11-20T10:00:01.000Z",
    duration_ms=1000.0, ttft_ms=None, upstream="openai", dialect="openai", operation="chat",
    method="POST", path="/openai/v1/chat/completions", request_model="gpt-4o",
    response_model="gpt-4o-2024-08-06", model="gpt-4o", stream=False, status_code=200,
    outcome="ok", input_tokens=100, cache_read_tokens=20, cache_write_tokens=0,
    output_tokens=10, reasoning_tokens=0, total_tokens=110, usage_source="reported",
    estimator=None, cost_usd=Decimal("0.001"), price_source="genai-prices 0.2.3", agent=None,
    session=None, run=None, tags={}, end_user=None, client=None, key_id=None,
    upstream_request_id="chatcmpl-1", error=None, usage_raw=None, input_source="reported",
    output_source="reported",
)


def make_record(**overrides: Any) -> CallRecord:
    values = {**_DEFAULTS, **overrides}
    tags = dict(values["tags"])
    for key in ("agent", "session", "run"):
        if values[key] is not None:
            tags.setdefault(key, values[key])
    values["tags"] = tags
    values.setdefault("list_cost_usd", values["cost_usd"])  # no adjustment: list = charged
    return CallRecord(**values)


def chat_json(model: str, usage: dict[str, int] | None) -> bytes:
    """A non-streamed Chat Completions body for `model` reporting `usage` (None: no usage)."""
    return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": model,
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "Lisbon."}}],
                       "usage": usage}).encode()
