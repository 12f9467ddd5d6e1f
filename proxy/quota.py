"""Provider quota: the rate-limit and quota headers a response carries, and what they say.

Each provider's home reads its own headers (`Provider.quota(headers, now)`, pure) into a
`Quota`: the headers as sent (keys lowercased, for the ledger's `quota` column) and the
windows they describe (utilization 0..1, when the window resets, its status). The record
carries it to the ledger, the gauge and the page; `session_shares` turns a ledger's worth of
them into each session's share of a window (`tokenbooth report --quota`). Sans-IO.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from proxy.value import value

__all__ = ["MAX_HEADERS", "MAX_VALUE_CHARS", "Quota", "QuotaCall", "QuotaWindow", "Share",
           "kept_headers", "limit_window", "parse_number", "parse_reset", "session_shares",
           "used_fraction"]

MAX_HEADERS = 64  # a response's quota headers kept at most (they are a few dozen at most)
MAX_VALUE_CHARS = 200  # each value cut there: a header is a number, a time or a word


@value
class QuotaWindow:
    """One window a provider counts against: Anthropic's unified `5h` and `7d` (and
    model-scoped ones such as `7d_opus`), or a limit/remaining pair (`requests`, `tokens`)."""

    name: str
    utilization: float | None  # spent fraction, 0..1 (None: the headers do not say)
    resets_at: float | None = None  # epoch seconds
    status: str | None = None  # Anthropic: allowed | allowed_warning | rejected
    limit: int | None = None
    remaining: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "utilization": self.utilization,
                "resets_at": self.resets_at, "status": self.status, "limit": self.limit,
                "remaining": self.remaining}


@value
class Quota:
    """A response's quota headers (what the ledger keeps) and the windows read from them."""

    headers: Mapping[str, str]
    windows: tuple[QuotaWindow, ...] = ()
    seen_at: float = 0.0  # epoch seconds the response's head arrived
    status: str | None = None  # the account's overall status, when the provider sends one

    def window(self, name: str) -> QuotaWindow | None:
        return next((w for w in self.windows if w.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"seen_at": self.seen_at, "status": self.status,
                "windows": [w.to_json() for w in self.windows]}


def kept_headers(headers: Mapping[str, str], prefixes: tuple[str, ...]) -> dict[str, str]:
    """The headers whose lowercased name starts with one of `prefixes`, keys lowercased,
    at most MAX_HEADERS of them, each value cut at MAX_VALUE_CHARS."""
    found = [(key, text) for name, text in headers.items()
             for key in (name.lower(),) if key.startswith(prefixes)]
    out: dict[str, str] = {}
    for key, text in found:  # the first of a name wins
        if key not in out:
            out[key] = text[:MAX_VALUE_CHARS]
            if len(out) >= MAX_HEADERS:
                break
    return out


def parse_number(value: str | None) -> float | None:
    """A finite, non-negative number, or None."""
    if value is None:
        return None
    try:
        n = float(value.strip())
    except ValueError:
        return None
    return n if math.isfinite(n) and n >= 0 else None


_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?(?:ns|us|µs|ms|h|m|s))+")
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?)(ns|us|µs|ms|h|m|s)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                 "h": 3600.0}
_EPOCH_2001 = 1e9  # a smaller number is seconds from now, not a time
_EPOCH_MS = 1e11  # a larger one is epoch milliseconds (OpenRouter)


def parse_reset(value: str | None, now: float) -> float | None:
    """When a window resets, as epoch seconds, from the forms providers send: epoch
    seconds (`1785182400`, Anthropic's unified windows) or milliseconds, an RFC 3339 time
    (`2026-12-03T10:00:00Z`, Anthropic's API limits), or a time from now (`6m0s`, `1.5s`,
    `20ms`: OpenAI, Groq; or a bare small number of seconds). None when it is none of
    these."""
    if value is None:
        return None
    text = value.strip()
    if text[-1:] in ("s", "m", "h"):  # a duration (no time or number ends so)
        if _DURATION.fullmatch(text) is None:
            return None
        return now + sum(float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
                         for m in _PART.finditer(text))
    n = parse_number(text)
    if n is not None:
        if n >= _EPOCH_MS:
            return n / 1000
        return n if n >= _EPOCH_2001 else now + n
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _whole(value: float | None) -> int | None:
    """A count read by parse_number, as an int."""
    return None if value is None else int(value)


def used_fraction(limit: float | None, remaining: float | None) -> float | None:
    """1 - remaining/limit, within 0..1; None without a positive limit."""
    if limit is None or remaining is None or limit <= 0:
        return None
    return min(max(1.0 - remaining / limit, 0.0), 1.0)


def limit_window(name: str, limit: str | None, remaining: str | None, reset: str | None,
                 now: float) -> QuotaWindow:
    """The window a limit/remaining/reset header triple describes (`-` in its name as `_`)."""
    lim, left = parse_number(limit), parse_number(remaining)
    return QuotaWindow(name.replace("-", "_"), used_fraction(lim, left), parse_reset(reset, now),
                       limit=_whole(lim), remaining=_whole(left))


@value
class QuotaCall:
    """One ledger row's part in a window: who made the call, and the window's utilization
    its response reported."""

    call_id: str
    seen_at: float  # when its response's head arrived (epoch seconds): the reading's order
    upstream: str
    account: str
    session: str | None
    utilization: float
    resets_at: float | None


@dataclass
class Share:
    """A session's share of one account's window: the sum, over its calls, of the rise
    from the utilization its response reported to the next one reported for the account."""

    upstream: str
    account: str
    resets_at: float | None
    session: str | None
    calls: int = 0
    measured_calls: int = 0  # calls followed by a later reading in the same window
    share: float = 0.0
    before: float | None = None  # the utilization its first call's response reported
    after: float | None = None  # the reading after its last measured call

    def to_json(self) -> dict[str, Any]:
        return {"upstream": self.upstream, "account": self.account,
                "resets_at": self.resets_at, "session": self.session, "calls": self.calls,
                "measured_calls": self.measured_calls, "share": round(self.share, 6),
                "before": self.before, "after": self.after}


def session_shares(calls: Iterable[QuotaCall]) -> list[Share]:
    """Each session's share of each account's window.

    A call's own response reports the utilization before the call's tokens are counted
    (a stream's head arrives before its output exists), so the call's share is the rise
    from that reading to the next reading of the same account in the same window (the
    same reset time). The last call of a window has no later reading yet: it counts in
    `calls`, not in `measured_calls`. Summed over every session, the shares of a window
    are its last reading minus its first.
    """
    by_window: dict[tuple[str, str, float | None], list[QuotaCall]] = {}
    for c in calls:
        by_window.setdefault((c.upstream, c.account, c.resets_at), []).append(c)
    out: dict[tuple[str, str, float | None, str | None], Share] = {}
    for (upstream, account, resets_at), readings in by_window.items():
        readings.sort(key=lambda c: (c.seen_at, c.call_id))
        for i, c in enumerate(readings):
            key = (upstream, account, resets_at, c.session)
            s = out.get(key)
            if s is None:
                s = out[key] = Share(upstream, account, resets_at, c.session,
                                     before=c.utilization)
            s.calls += 1
            if i + 1 < len(readings):
                nxt = readings[i + 1].utilization
                s.measured_calls += 1
                s.share += nxt - c.utilization
                s.after = nxt
    return sorted(out.values(), key=lambda s: (s.upstream, s.account, s.resets_at or 0.0,
                                                -s.share, s.session or ""))
