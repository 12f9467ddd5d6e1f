"""Anthropic's quota headers, in the shapes its responses carry: a Claude subscription's
unified windows (5h, 7d, a model-scoped weekly window), an API key's limits, and junk."""

from __future__ import annotations

from datetime import UTC, datetime

from proxy.dialects import PROVIDERS
from proxy.dialects.anthropic.quota import read_quota
from proxy.quota import QuotaWindow

NOW = 1_785_170_000.0
# A Max plan's response head (the header set Claude Code sees on every call), plus what a
# response always has besides.
SUBSCRIPTION = {
    "Content-Type": "application/json",
    "request-id": "req_011CV",
    "anthropic-organization-id": "0f8e2c5a-org",
    "anthropic-ratelimit-unified-5h-utilization": "0.42",
    "anthropic-ratelimit-unified-5h-reset": "1785182400",
    "anthropic-ratelimit-unified-5h-status": "allowed",
    "anthropic-ratelimit-unified-7d-utilization": "0.3",
    "anthropic-ratelimit-unified-7d-reset": "1785751200",
    "anthropic-ratelimit-unified-7d-status": "allowed_warning",
    "anthropic-ratelimit-unified-7d-surpassed-threshold": "0.25",
    "anthropic-ratelimit-unified-7d_opus-utilization": "0.9",
    "anthropic-ratelimit-unified-7d_opus-reset": "1785751200",
    "anthropic-ratelimit-unified-7d_opus-status": "allowed_warning",
    "anthropic-ratelimit-unified-fallback-percentage": "0.5",
    "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
    "anthropic-ratelimit-unified-overage-status": "rejected",
    "anthropic-ratelimit-unified-representative-claim": "five_hour",
    "anthropic-ratelimit-unified-reset": "1785182400",
    "anthropic-ratelimit-unified-status": "allowed",
}


def test_a_subscriptions_unified_windows() -> None:
    q = read_quota(SUBSCRIPTION, NOW)
    assert q is not None
    assert q.windows == (
        QuotaWindow("5h", 0.42, 1785182400.0, "allowed"),
        QuotaWindow("7d", 0.3, 1785751200.0, "allowed_warning"),
        QuotaWindow("7d_opus", 0.9, 1785751200.0, "allowed_warning"),
    )
    assert q.status == "allowed" and q.seen_at == NOW
    # every anthropic-ratelimit-* header, as sent; nothing else (no ids, no organization)
    assert q.headers == {k: v for k, v in SUBSCRIPTION.items()
                         if k.startswith("anthropic-ratelimit-")}
    assert len(q.headers) == 16


def test_an_api_keys_limits_are_windows_of_remaining_over_limit() -> None:
    q = read_quota({
        "Anthropic-RateLimit-Requests-Limit": "50",
        "Anthropic-RateLimit-Requests-Remaining": "49",
        "Anthropic-RateLimit-Requests-Reset": "2026-12-03T10:00:01Z",
        "anthropic-ratelimit-tokens-limit": "80000",
        "anthropic-ratelimit-tokens-remaining": "60000",
        "anthropic-ratelimit-tokens-reset": "2026-12-03T10:00:30Z",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "30000",
        "anthropic-ratelimit-input-tokens-reset": "2026-12-03T10:00:30Z",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "8000",
        "anthropic-ratelimit-output-tokens-reset": "2026-12-03T10:00:02Z",
        "retry-after": "3",
    }, NOW)
    assert q is not None and q.status is None
    at = lambda s: datetime(2026, 12, 3, 10, 0, s, tzinfo=UTC).timestamp()  # noqa: E731
    assert q.windows == (  # 1 - remaining/limit: 1/50, 20000/80000, 10000/40000, 0
        QuotaWindow("input_tokens", 0.25, at(30), limit=40000, remaining=30000),
        QuotaWindow("output_tokens", 0.0, at(2), limit=8000, remaining=8000),
        QuotaWindow("requests", 1 - 49 / 50, at(1), limit=50, remaining=49),
        QuotaWindow("tokens", 0.25, at(30), limit=80000, remaining=60000),
    )
    assert "retry-after" not in q.headers and len(q.headers) == 12


def test_no_quota_headers_is_none_and_junk_values_are_no_numbers() -> None:
    assert read_quota({"Content-Type": "application/json"}, NOW) is None
    q = read_quota({"anthropic-ratelimit-unified-5h-utilization": "lots",
                    "anthropic-ratelimit-unified-5h-reset": "tomorrow",
                    "anthropic-ratelimit-requests-limit": "0",
                    "anthropic-ratelimit-requests-remaining": "0"}, NOW)
    assert q is not None
    assert q.windows == (QuotaWindow("5h", None, None, None),
                         QuotaWindow("requests", None, None, limit=0, remaining=0))


def test_the_anthropic_provider_reads_them() -> None:
    q = PROVIDERS["anthropic"].quota(SUBSCRIPTION, NOW)
    assert q is not None and q.window("5h") == QuotaWindow("5h", 0.42, 1785182400.0, "allowed")
    assert PROVIDERS["gemini"].quota(SUBSCRIPTION, NOW) is None  # not its headers
