"""The rate-limit headers in each SDK's style: OpenAI's `x-ratelimit-*` with Go-style
durations, Anthropic's `anthropic-ratelimit-*` with RFC 3339 resets, none without a view."""

from __future__ import annotations

from proxy.admission.rate_headers import Dim, RateView, headers_for, openai_duration


def test_the_headers_in_each_sdks_style() -> None:
    assert [openai_duration(s) for s in (0.02, 1, 17.28, 59.9991, 360, 3600)] == \
        ["20ms", "1s", "17.28s", "1m0s", "6m0s", "1h0m0s"]
    view = RateView(Dim(100, 7, 60.0), Dim(5000, 120, 12.5))
    assert headers_for(view, "openai") == {
        "x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "7",
        "x-ratelimit-reset-requests": "1m0s", "x-ratelimit-limit-tokens": "5000",
        "x-ratelimit-remaining-tokens": "120", "x-ratelimit-reset-tokens": "12.5s"}
    # Anthropic's: the reset is a time (RFC 3339): 1764000000 + 60 is 2025-11-24 16:01:00 UTC,
    # + 12.5 rounds up to the next whole second
    assert headers_for(view, "anthropic", now=1_764_000_000.0) == {
        "anthropic-ratelimit-requests-limit": "100",
        "anthropic-ratelimit-requests-remaining": "7",
        "anthropic-ratelimit-requests-reset": "2025-11-24T16:01:00Z",
        "anthropic-ratelimit-tokens-limit": "5000",
        "anthropic-ratelimit-tokens-remaining": "120",
        "anthropic-ratelimit-tokens-reset": "2025-11-24T16:00:13Z"}
    assert headers_for(None, "openai") == {}
