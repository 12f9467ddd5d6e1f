"""CallFacts (what the handler saw) and CallRecord (the one immutable record of a call).

Every sink (ledger, metrics, live feed, budgets) reads the same CallRecord; `to_row()` is
the ledger's column order and `to_json()` the API's row shape, so they cannot disagree.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from proxy.dialects.base import NOTHING_OBSERVED, Observation, RequestInfo
from proxy.keys import ConsumerKey
from proxy.outcome import End
from proxy.quota import Quota
from proxy.tracecontext import SpanIds
from proxy.usage import Usage
from proxy.value import value

__all__ = ["COLUMNS", "CallFacts", "CallRecord", "LiveCall", "iso_utc"]

COLUMNS = (
    "call_id", "started_at", "ended_at", "duration_ms", "ttft_ms", "upstream", "dialect",
    "operation", "method", "path", "request_model", "response_model", "model", "stream",
    "status_code", "outcome", "input_tokens", "cache_read_tokens", "cache_write_tokens",
    "output_tokens", "reasoning_tokens", "total_tokens", "usage_source", "estimator",
    "cost_usd", "price_source", "agent", "session", "run", "tags", "end_user", "client",
    "key_id", "upstream_request_id", "error", "usage_raw", "service_tier", "priced_units",
    "batch_id", "quota", "list_cost_usd",
    "consumer_key",  # issue 20: the consumer key's id (`key_...`) the call was made with
)


_second: list[object] = [None, ""]  # the last whole second formatted, and its text
_MS = [f".{ms:03d}Z" for ms in range(1000)]  # each millisecond's tail, formatted once
# json.dumps(x, sort_keys=True, ...) as encoders built once: json.dumps with any option
# builds a new JSONEncoder for every call (the text is the same)
_SORTED_JSON = json.JSONEncoder(sort_keys=True).encode
_TAGS_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode


def iso_utc(ts: float) -> str:
    """ISO 8601 UTC with milliseconds and a Z suffix (same digits as datetime's rounding).

    Called for every call record; strftime runs once per wall-clock second, not per call.
    """
    sec = math.floor(ts)
    micros = round((ts - sec) * 1e6)
    if micros >= 1_000_000:
        sec, micros = sec + 1, micros - 1_000_000
    cached = _second
    if cached[0] != sec:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        cached[0] = sec
    text: str = cached[1]  # type: ignore[assignment]  # the str set above
    return text + _MS[micros // 1000]


@dataclass(slots=True)
class CallFacts:
    """Raw facts of one call: what the handler saw, a batch's result line, or a call read
from a client's own log. `build.build_record` turns them into the CallRecord."""

    call_id: str
    started: float  # wall clock, seconds
    t0: float  # monotonic at start
    upstream: str
    dialect: str | None
    operation: str
    method: str
    path: str
    parser: str | None = None
    path_model: str | None = None
    request_body: bytes = b""
    request_info: RequestInfo | None = None  # what the request says (parsed once)
    request_doc: Any = None  # the parsed request body, kept for an input estimate
    tags: dict[str, str] = field(default_factory=dict)
    tags_cleaned: int = 0  # X-Meter-* values truncated, cleaned or over the cap
    meter_tag_keys: frozenset[str] = frozenset()  # the tags X-Meter-* set (over a key's)
    client: str | None = None
    key: ConsumerKey | None = None  # the consumer key presented (issued at run time)
    credential: str | None = None
    status_code: int | None = None  # the upstream's (None: it never answered)
    end: End | None = None  # what ended the call early (None: the body ran to its end)
    end_detail: str | None = None  # the budget that refused, the exception's type
    first_byte: float | None = None  # monotonic
    ended: float = 0.0  # monotonic
    stream: bool = False
    observation: Observation = NOTHING_OBSERVED  # frozen: one shared empty value
    request_id_header: str | None = None
    free: bool = False
    batch_id: str | None = None  # a batch-results download
    price_provider: str | None = None  # genai-prices provider id
    # Where the usage came from when not from the provider's response: "client_log" (a
    # client's own transcript, imported). It is then the row's usage_source as it stands.
    usage_from: str | None = None
    logged_at: str | None = None  # a logged call's time as the log wrote it (ledger text)
    quota: Quota | None = None  # the response's rate-limit/quota headers, read
    # Attribution (proxy.attribution): the end user (X-Meter-End-User, another tool's header,
    # else the body's), and other tools' attribution values that could not be read.
    end_user: str | None = None
    attribution_unreadable: int = 0
    # The call's OTel span ids, chosen at its start (only with otel spans on): the upstream
    # request names this span as its parent; the OTel sink emits it from the record.
    trace: SpanIds | None = None


@value
class CallRecord:
    call_id: str
    started_at: str
    ended_at: str
    duration_ms: float
    ttft_ms: float | None
    upstream: str
    dialect: str | None
    operation: str
    method: str
    path: str
    request_model: str | None
    response_model: str | None
    model: str | None
    stream: bool
    status_code: int | None
    outcome: str
    input_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    total_tokens: int | None
    usage_source: str
    estimator: str | None
    cost_usd: Decimal | None
    price_source: str | None
    agent: str | None
    session: str | None
    run: str | None
    tags: dict[str, str]
    end_user: str | None
    client: str | None
    key_id: str | None
    upstream_request_id: str | None
    error: str | None
    usage_raw: str | None
    service_tier: str | None = None
    priced_units: dict[str, int] | None = None
    batch_id: str | None = None
    quota: Quota | None = None  # the column holds its headers (JSON)
    # The list price's cost (before `pricing.adjustments`); cost_usd is what is charged.
    # NULL exactly when cost_usd is (unpriced), 0 when it is 0 (free).
    list_cost_usd: Decimal | None = None
    consumer_key: str | None = None  # the consumer key's id (not its secret)
    # Not columns: how each token class was obtained, for the metrics' `source` label.
    input_source: str = "none"  # reported | estimated | none
    output_source: str = "none"
    tags_cleaned: int = 0  # X-Meter-* values truncated or cleaned (metrics)
    parse_errors: int = 0  # response events the meter could not read (metrics)
    attribution_unreadable: int = 0  # other tools' attribution not readable (metrics)
    trace: SpanIds | None = None  # the call's span ids (OTel spans on), not a column
    started_ts: float = 0.0  # wall clock at the start, seconds (the span's start time)
    # Not columns: the body's own response id (`upstream_request_id` falls back to the
    # request-id header); a batch download's span (on its first line's record only: the
    # OTel sink emits it, the lines' spans are its children).
    response_id: str | None = None
    download_trace: SpanIds | None = None

    @property
    def unpriced(self) -> bool:
        """No cost, and the call succeeded upstream or carried usage: spend with no price
        (the ledger's UNPRICED expression says the same). A pending background response
        is not unpriced: its usage is not known yet."""
        return self.cost_usd is None and (self.outcome == "ok" or self.usage_source != "none") \
            and self.usage_source != "pending"

    def to_row(self) -> tuple[Any, ...]:
        return (
            self.call_id, self.started_at, self.ended_at, self.duration_ms, self.ttft_ms,
            self.upstream, self.dialect, self.operation, self.method, self.path,
            self.request_model, self.response_model, self.model, int(self.stream),
            self.status_code, self.outcome, self.input_tokens, self.cache_read_tokens,
            self.cache_write_tokens, self.output_tokens, self.reasoning_tokens,
            self.total_tokens, self.usage_source, self.estimator,
            None if self.cost_usd is None else float(self.cost_usd), self.price_source,
            self.agent, self.session, self.run,
            _TAGS_JSON(self.tags) if self.tags else "{}",
            self.end_user,
            self.client, self.key_id, self.upstream_request_id, self.error, self.usage_raw,
            self.service_tier,
            _SORTED_JSON(self.priced_units) if self.priced_units else None,
            self.batch_id,
            _SORTED_JSON(dict(self.quota.headers)) if self.quota else None,
            None if self.list_cost_usd is None else float(self.list_cost_usd),
            self.consumer_key,
        )

    def to_json(self) -> dict[str, Any]:
        row = dict(zip(COLUMNS, self.to_row(), strict=True))
        row["stream"] = self.stream
        row["tags"] = dict(self.tags)
        row["priced_units"] = dict(self.priced_units or {})
        row["quota"] = dict(self.quota.headers) if self.quota else None
        return row


@dataclass(slots=True)
class LiveCall:
    """A call in flight, as the live feed and the in-flight gauge see it."""

    call_id: str
    started_at: str
    upstream: str
    operation: str
    stream: bool
    agent: str | None
    session: str | None
    run: str | None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    usage_source: str = "none"
    tags: dict[str, str] = field(default_factory=dict)  # parent runs, sub-agents
    # Not shown: what prices the running cost as the final record will be priced.
    price_provider: str | None = None
    usage: Usage | None = None  # the running Usage (every billed unit)
    free: bool = False
    dialect: Any = None  # the request's dialect and parsed body: an input estimate while
    request_doc: Any = None  # the provider has not reported input (OpenAI streams: at the end)
    request_bytes: int = 0
    input_estimate: Any = None  # int (-1: failed), or the future of one for a large body

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _SHOWN}


_SHOWN = ("call_id", "started_at", "upstream", "operation", "stream", "agent", "session", "run",
          "model", "input_tokens", "output_tokens", "cost_usd", "usage_source", "tags")
