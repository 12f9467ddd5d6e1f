"""The rate limits' sliding window arithmetic, sans I/O: one limit's log of admissions in
this process (`Log`: entries in admission order, with running sums over the last minute and
hour), the figures a decision reads from it (`Figures`), which of a limit's kinds a call would
break (`refused_dims`, `never_fits`), and the seconds until enough of the window ages out for
a call to fit (`Log.retry`). Times are the caller's clock (monotonic seconds). The verdict
across a call's limits and the stores that keep the logs are `proxy/admission/rates.py`'s."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any

from proxy.config import RateLimitConfig
from proxy.value import value

__all__ = ["HOUR", "MINUTE", "Figures", "Log", "never_fits", "refused_dims"]

MINUTE = 60.0
HOUR = 3600.0


@lru_cache(maxsize=256)
def _dec(x: float | None) -> Decimal | None:
    """A configured dollar figure as the exact decimal it was written as."""
    return None if x is None else Decimal(repr(x))


@value
class Figures:
    """One limit's window as a decision reads it, before the call: requests and tokens in
    the last minute, dollars in the last minute and hour, and how long ago the newest
    admission was (None: none in the minute)."""

    requests: int
    tokens: int
    usd_minute: Decimal
    usd_hour: Decimal
    newest_age: float | None


def refused_dims(cfg: RateLimitConfig, f: Figures, tokens: int, usd: Decimal
                 ) -> list[str]:
    """Which of the limit's kinds this call would break (empty: it fits)."""
    out = []
    if cfg.requests_per_minute is not None and f.requests + 1 > cfg.requests_per_minute:
        out.append("requests")
    if cfg.tokens_per_minute is not None and f.tokens + tokens > cfg.tokens_per_minute:
        out.append("tokens")
    um, uh = _dec(cfg.usd_per_minute), _dec(cfg.usd_per_hour)
    if um is not None and f.usd_minute + usd > um:
        out.append("usd_per_minute")
    if uh is not None and f.usd_hour + usd > uh:
        out.append("usd_per_hour")
    return out


def never_fits(cfg: RateLimitConfig, tokens: int, usd: Decimal) -> bool:
    """The call alone is more than the limit allows in its whole window."""
    um, uh = _dec(cfg.usd_per_minute), _dec(cfg.usd_per_hour)
    return (cfg.tokens_per_minute is not None and tokens > cfg.tokens_per_minute) or \
        (um is not None and usd > um) or (uh is not None and usd > uh)


class _Entry:
    __slots__ = ("at", "call_id", "hour", "minute", "tokens", "usd")

    def __init__(self, at: float, call_id: str, tokens: int, usd: Decimal) -> None:
        self.at, self.call_id, self.tokens, self.usd = at, call_id, tokens, usd
        self.minute = True  # still counted in the minute's sums
        self.hour = True


class Log:
    """One limit's sliding window log in this process: entries in admission order, with
    running sums over the last minute (requests, tokens, dollars) and hour (dollars)."""

    def __init__(self, cfg: RateLimitConfig) -> None:
        self.cfg = cfg
        self.minute: deque[_Entry] = deque()
        self.hour: deque[_Entry] | None = deque() if cfg.usd_per_hour is not None else None
        self.by_call: dict[str, _Entry] = {}
        self.requests = 0
        self.tokens = 0
        self.usd_minute = Decimal(0)
        self.usd_hour = Decimal(0)

    def prune(self, now: float) -> None:
        minute, cut = self.minute, now - MINUTE
        while minute and minute[0].at <= cut:
            e = minute.popleft()
            if e.minute:
                e.minute = False
                self.requests -= 1
                self.tokens -= e.tokens
                self.usd_minute -= e.usd
            if self.hour is None or not e.hour:
                self.by_call.pop(e.call_id, None)
        hour = self.hour
        if hour is not None:
            cut = now - HOUR
            while hour and hour[0].at <= cut:
                e = hour.popleft()
                if e.hour:
                    e.hour = False
                    self.usd_hour -= e.usd
                self.by_call.pop(e.call_id, None)

    def figures(self, now: float) -> Figures:
        self.prune(now)
        newest = next((e.at for e in reversed(self.minute) if e.minute), None)
        return Figures(self.requests, self.tokens, self.usd_minute, self.usd_hour,
                       None if newest is None else now - newest)

    def retry(self, now: float, tokens: int, usd: Decimal) -> float | None:
        """Seconds until enough of the window ages out for the call to fit (None: never)."""
        cfg = self.cfg
        if never_fits(cfg, tokens, usd):
            return None
        wait = 0.0
        live = [e for e in self.minute if e.minute]
        if cfg.requests_per_minute is not None:
            need = self.requests + 1 - cfg.requests_per_minute
            if need > 0:
                wait = max(wait, live[need - 1].at + MINUTE - now)
        wait = max(wait, _aged(live, lambda e: e.tokens, self.tokens + tokens,
                               cfg.tokens_per_minute, MINUTE, now))
        wait = max(wait, _aged(live, lambda e: e.usd, self.usd_minute + usd,
                               _dec(cfg.usd_per_minute), MINUTE, now))
        if self.hour is not None:
            wait = max(wait, _aged([e for e in self.hour if e.hour], lambda e: e.usd,
                                   self.usd_hour + usd, _dec(cfg.usd_per_hour), HOUR, now))
        return wait

    def hold(self, now: float, call_id: str, tokens: int, usd: Decimal) -> None:
        e = _Entry(now, call_id, tokens, usd)
        self.minute.append(e)
        if self.hour is not None:
            self.hour.append(e)
        else:
            e.hour = False
        self.by_call[call_id] = e
        self.requests += 1
        self.tokens += tokens
        self.usd_minute += usd
        self.usd_hour += usd if self.hour is not None else 0

    def settle(self, call_id: str, admitted: bool, tokens: int, usd: Decimal) -> None:
        """The call's record: its reservation becomes what it used, or, never admitted
        (refused by a later check), it leaves the log."""
        e = self.by_call.get(call_id)
        if e is None:
            return
        if e.minute:
            self.tokens += tokens - e.tokens
            self.usd_minute += usd - e.usd
            if not admitted:
                e.minute = False
                self.requests -= 1
                self.tokens -= tokens
                self.usd_minute -= usd
        if e.hour:
            self.usd_hour += usd - e.usd
            if not admitted:
                e.hour = False
                self.usd_hour -= usd
        e.tokens, e.usd = tokens, usd
        if not admitted:
            del self.by_call[call_id]


def _aged(entries: Sequence[_Entry], amount: Any, total: Any, limit: Any, span: float,
          now: float) -> float:
    """Seconds until the oldest entries' amounts, aging out, bring `total` within `limit`."""
    if limit is None or total <= limit:
        return 0.0
    need, freed = total - limit, 0
    for e in entries:
        freed += amount(e)
        if freed >= need:
            return e.at + span - now
    return entries[-1].at + span - now if entries else 0.0

