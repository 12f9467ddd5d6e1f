"""OpenAI's x-ratelimit-* headers (and an OpenAI-compatible server's): windows `requests`
and `tokens`, utilization 1 - remaining/limit, reset a time from the response."""

from __future__ import annotations

from proxy.dialects import PROVIDERS
from proxy.dialects.openai.quota import read_quota
from proxy.quota import QuotaWindow

NOW = 1_790_000_000.0
OPENAI = {
    "openai-organization": "org-secret-ish",
    "openai-processing-ms": "312",
    "x-request-id": "req_abc",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "29997000",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "6m0s",
}


def test_requests_and_tokens_windows() -> None:
    q = read_quota(OPENAI, NOW)
    assert q is not None and q.status is None and q.seen_at == NOW
    # 1 - 9999/10000 = 0.0001; 1 - 29,997,000/30,000,000 = 0.0001
    req, tok = q.windows
    assert (req.name, req.limit, req.remaining) == ("requests", 10000, 9999)
    assert abs(req.utilization - 0.0001) < 1e-12 and req.resets_at == NOW + 0.006  # type: ignore[operator]
    assert (tok.name, tok.limit, tok.remaining) == ("tokens", 30000000, 29997000)
    assert abs(tok.utilization - 0.0001) < 1e-12 and tok.resets_at == NOW + 360  # type: ignore[operator]
    assert q.headers == {k: v for k, v in OPENAI.items() if k.startswith("x-ratelimit-")}


def test_a_groq_style_day_window_and_a_limit_without_remaining() -> None:
    q = read_quota({"X-RateLimit-Limit-Requests": "14400",
                    "X-RateLimit-Remaining-Requests": "14370",
                    "X-RateLimit-Reset-Requests": "2m59.56s",
                    "x-ratelimit-limit-tokens": "18000"}, NOW)
    assert q is not None
    assert q.windows == (
        QuotaWindow("requests", 1 - 14370 / 14400, NOW + 179.56, limit=14400, remaining=14370),
        QuotaWindow("tokens", None, None, limit=18000, remaining=None),
    )


def test_no_ratelimit_headers_is_none_and_the_provider_reads_them() -> None:
    assert read_quota({"x-request-id": "req_1"}, NOW) is None
    q = PROVIDERS["openai"].quota(OPENAI, NOW)
    assert q is not None and [w.name for w in q.windows] == ["requests", "tokens"]
