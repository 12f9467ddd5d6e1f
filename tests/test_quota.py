"""proxy/quota.py: the reset forms providers send, the kept headers, and each session's share
of a window (the rises that followed its calls), worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proxy.quota import (
    MAX_HEADERS,
    MAX_VALUE_CHARS,
    Quota,
    QuotaCall,
    QuotaWindow,
    kept_headers,
    parse_number,
    parse_reset,
    session_shares,
    used_fraction,
)

NOW = 1_790_000_000.0


@pytest.mark.parametrize(("value", "expected"), [
    ("1785182400", 1785182400.0),  # Anthropic unified: epoch seconds
    ("1785182400000", 1785182400.0),  # OpenRouter: epoch milliseconds
    ("2026-12-03T10:00:00Z", datetime(2026, 12, 3, 10, tzinfo=UTC).timestamp()),  # RFC 3339
    ("2026-12-03T10:00:00", datetime(2026, 12, 3, 10, tzinfo=UTC).timestamp()),  # naive: UTC
    ("6m0s", NOW + 360),  # OpenAI
    ("1s", NOW + 1),
    ("20ms", NOW + 0.02),
    ("1h2m3.5s", NOW + 3723.5),
    ("2m59.56s", NOW + 179.56),  # Groq
    ("42", NOW + 42),  # a bare small number: seconds from now
    (" 7s ", NOW + 7),
])
def test_resets_in_every_form_providers_send(value: str, expected: float) -> None:
    assert parse_reset(value, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("value", [None, "", "soon", "6 minutes", "-5", "nan", "inf", "1x"])
def test_a_reset_that_is_no_time_is_none(value: str | None) -> None:
    assert parse_reset(value, NOW) is None


def test_numbers_are_finite_and_not_negative() -> None:
    assert parse_number("0.42") == 0.42 and parse_number(" 0 ") == 0.0
    assert [parse_number(v) for v in (None, "", "-0.1", "nan", "inf", "42%")] == [None] * 6


def test_used_fraction_is_one_minus_remaining_over_limit_within_0_and_1() -> None:
    assert used_fraction(10_000, 7_500) == 0.25
    assert used_fraction(500, 500) == 0.0
    assert used_fraction(100, 250) == 0.0  # more left than the limit: nothing used
    assert [used_fraction(0, 0), used_fraction(None, 1), used_fraction(5, None)] == [None] * 3


def test_kept_headers_are_the_prefixed_ones_lowercased_capped_and_cut() -> None:
    headers = {"X-RateLimit-Limit-Requests": "500", "x-request-id": "req_1",
               "Authorization": "Bearer sk-secret", "X-RATELIMIT-RESET-TOKENS": "6m0s",
               "x-ratelimit-note": "n" * 500}
    kept = kept_headers(headers, ("x-ratelimit-",))
    assert kept == {"x-ratelimit-limit-requests": "500", "x-ratelimit-reset-tokens": "6m0s",
                    "x-ratelimit-note": "n" * MAX_VALUE_CHARS}
    many = {f"x-ratelimit-h{i}": str(i) for i in range(MAX_HEADERS + 10)}
    assert len(kept_headers(many, ("x-ratelimit-",))) == MAX_HEADERS


def test_a_quota_names_its_windows() -> None:
    five = QuotaWindow("5h", 0.42, 1785182400.0, "allowed")
    q = Quota({"a": "b"}, (five,), NOW, "allowed")
    assert q.window("5h") is five and q.window("7d") is None
    assert q.to_json() == {"seen_at": NOW, "status": "allowed", "windows": [
        {"name": "5h", "utilization": 0.42, "resets_at": 1785182400.0, "status": "allowed",
         "limit": None, "remaining": None}]}


def call(call_id: str, seen: float, session: str | None, u: float, resets: float = 5000.0,
         account: str = "k_a") -> QuotaCall:
    return QuotaCall(call_id, seen, "anthropic", account, session, u, resets)


def test_each_call_gets_the_rise_up_to_the_accounts_next_reading() -> None:
    # One account, two sessions interleaved, readings in arrival order:
    #   c1 (s-a) 0.10 -> c2 (s-b) 0.14 -> c3 (s-a) 0.15 -> c4 (s-a) 0.21 -> c5 (s-b) 0.30
    # s-a: (0.14 - 0.10) + (0.21 - 0.15) + (0.30 - 0.21) = 0.19 over 3 measured calls
    # s-b: (0.15 - 0.14) = 0.01; its c5 is the window's latest: not measured yet
    calls = [call("c3", 30, "s-a", 0.15), call("c1", 10, "s-a", 0.10),
             call("c5", 50, "s-b", 0.30), call("c2", 20, "s-b", 0.14),
             call("c4", 40, "s-a", 0.21)]
    shares = {s.session: s for s in session_shares(calls)}
    a, b = shares["s-a"], shares["s-b"]
    assert (a.calls, a.measured_calls, a.before, a.after) == (3, 3, 0.10, 0.30)
    assert a.share == pytest.approx(0.19)
    assert (b.calls, b.measured_calls, b.before, b.after) == (2, 1, 0.14, 0.15)
    assert b.share == pytest.approx(0.01)
    # the shares of a window add up to its last reading minus its first
    assert a.share + b.share == pytest.approx(0.30 - 0.10)
    assert list(session_shares(calls))[0].session == "s-a"  # the larger share first


def test_a_new_window_and_another_account_are_counted_apart() -> None:
    # the 5-hour window resets between c2 and c3: c2's rise is not c3's reading minus its own
    calls = [call("c1", 10, "s", 0.50, resets=1000), call("c2", 20, "s", 0.60, resets=1000),
             call("c3", 30, "s", 0.02, resets=19000), call("c4", 40, "s", 0.05, resets=19000),
             call("o1", 15, "s", 0.90, account="k_b"), call("o2", 25, "s", 0.95, account="k_b")]
    got = {(s.account, s.resets_at): (s.calls, s.measured_calls, round(s.share, 6))
           for s in session_shares(calls)}
    assert got == {("k_a", 1000): (2, 1, 0.10), ("k_a", 19000): (2, 1, 0.03),
                   ("k_b", 5000): (2, 1, 0.05)}
    assert session_shares([]) == []
