"""The rate limits' check: a sliding window log per limit. A call is admitted when, in every
limit it matches,

- (requests admitted in the last 60 s) + 1 <= `requests_per_minute`,
- (tokens held or used by calls admitted in the last 60 s) + its reservation <=
  `tokens_per_minute`, the reservation being its input estimate plus `max_tokens` (the
  input alone when it sets none),
- and likewise its worst-case cost against `usd_per_minute` (60 s) and `usd_per_hour`
  (3600 s);

else it is refused, with the seconds until enough of the window ages out for it to fit.
What a call reserved is settled by its record: to the tokens and cost it used (0 when it
was never answered); a call refused by a later check was never admitted and leaves the log.

Limits come from config (`rate_limits:`, matched like budgets) and from the consumer key a
call presents (`facts.key.limits`): a key's limits act as a limit named `key:<id>` matching
that key.

Where the log is kept is the store's:
- `LocalRates`: in this process (SQLite ledger, or one replica).
- `FleetRates` (PostgreSQL): in the shared ledger (`tb_rate_event`); its reservation joins
  the budgets' round trip (`tb_admit`), and a record's row write settles it. While the
  database does not answer, this replica decides on its own log (the calls it admitted).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol

from proxy.admission.base import Ask, Denied, matches
from proxy.config import RateLimitConfig
from proxy.keys import KeyLimits
from proxy.record import CallRecord, iso_utc

__all__ = ["FleetRates", "LocalRates", "RateCheck", "RateView", "headers_for",
           "openai_duration"]

log = logging.getLogger("tokenbooth.rates")
MINUTE = 60.0
HOUR = 3600.0


def key_limit(key_id: str, limits: KeyLimits) -> RateLimitConfig | None:
    """A consumer key's own limits as a rate limit named `key:<id>` (None: it has none)."""
    if limits.requests_per_minute is None and limits.tokens_per_minute is None \
            and limits.usd_per_minute is None:
        return None
    return RateLimitConfig(f"key:{key_id}", {"key": key_id}, limits.requests_per_minute,
                           limits.tokens_per_minute, limits.usd_per_minute)


@lru_cache(maxsize=256)
def _dec(x: float | None) -> Decimal | None:
    """A configured dollar figure as the exact decimal it was written as."""
    return None if x is None else Decimal(repr(x))


@dataclass(frozen=True, slots=True)
class Figures:
    """One limit's window as a decision reads it, before the call: requests and tokens in
    the last minute, dollars in the last minute and hour, and how long ago the newest
    admission was (None: none in the minute)."""

    requests: int
    tokens: int
    usd_minute: Decimal
    usd_hour: Decimal
    newest_age: float | None


@dataclass(frozen=True, slots=True)
class Dim:
    """One kind of limit for the headers: its limit, what remains, seconds to full reset."""

    limit: int
    remaining: int
    reset: float


@dataclass(frozen=True, slots=True)
class RateView:
    """What the response's rate-limit headers say: the tightest requests and tokens limit
    among those the call matched (None: no limit of that kind applied)."""

    requests: Dim | None
    tokens: Dim | None


def _tightest(dims: Sequence[Dim]) -> Dim | None:
    return min(dims, key=lambda d: (d.remaining, -d.reset)) if dims else None


def view_of(limits: Sequence[RateLimitConfig], figures: Sequence[Figures], tokens: int,
            admitted: bool) -> RateView:
    """The headers' figures: after this call when admitted (its admission is the newest:
    a full reset is a minute away), else as they stand."""
    reqs, toks = [], []
    for cfg, f in zip(limits, figures, strict=True):
        reset = MINUTE if admitted else (MINUTE - f.newest_age if f.newest_age is not None
                                         else 0.0)
        if cfg.requests_per_minute is not None:
            used = f.requests + (1 if admitted else 0)
            reqs.append(Dim(cfg.requests_per_minute,
                            max(0, cfg.requests_per_minute - used), reset))
        if cfg.tokens_per_minute is not None:
            used = f.tokens + (tokens if admitted else 0)
            toks.append(Dim(cfg.tokens_per_minute, max(0, cfg.tokens_per_minute - used), reset))
    return RateView(_tightest(reqs), _tightest(toks))


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


_NAMES = {"requests": "requests per minute", "tokens": "tokens per minute",
          "usd_per_minute": "USD per minute", "usd_per_hour": "USD per hour",
          "window": "its window"}


def denial(cfg: RateLimitConfig, dims: Sequence[str], retry: float | None, view: RateView,
           tokens: int, usd: Decimal) -> Denied:
    """The refusal of one limit; `retry` in seconds (None: the call can never fit)."""
    what = ", ".join(_NAMES[d] for d in dims)
    if retry is None:
        text = (f"Tokenbooth rate limit '{cfg.name}' ({what}) can never admit this request: "
                f"it reserves {tokens} tokens (input estimate plus max_tokens) and "
                f"${usd:.6g}, more than the limit allows in its whole window; lower "
                f"max_tokens. The request was not sent; a retry as it is cannot succeed.")
        wait = HOUR if "usd_per_hour" in dims else MINUTE
    else:
        wait = max(retry, 0.001)
        text = (f"Tokenbooth rate limit '{cfg.name}' reached ({what}); retry in "
                f"{math.ceil(wait)} s. The request was not sent.")
    return Denied(cfg.name, cfg.usd_per_minute or cfg.usd_per_hour or 0.0,
                  max(1, math.ceil(wait)), check="rate", detail=text,
                  retry_after_ms=max(1, math.ceil(wait * 1000)), view=view,
                  never=retry is None)


def decide(limits: Sequence[RateLimitConfig], figures: Sequence[Figures],
           retries: Sequence[float | None], tokens: int, usd: Decimal
           ) -> tuple[Denied | None, RateView]:
    """Every limit's verdict on the figures: the refusal whose wait is longest (the call
    fits once every limit has room), or the view of an admission. `retries[i]`: seconds
    until limit i has room for the call (None: never), read only where it refuses."""
    worst: tuple[float, int, list[str]] | None = None
    for i, (cfg, f) in enumerate(zip(limits, figures, strict=True)):
        dims = refused_dims(cfg, f, tokens, usd)
        if not dims:
            continue
        wait = math.inf if retries[i] is None else float(retries[i] or 0.0)
        if worst is None or wait > worst[0]:
            worst = (wait, i, dims)
    if worst is None:
        return None, view_of(limits, figures, tokens, True)
    wait, i, dims = worst
    view = view_of(limits, figures, tokens, False)
    return denial(limits[i], dims, None if math.isinf(wait) else wait, view, tokens,
                  usd), view


# --- the log in this process ---

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


class RateStore(Protocol):
    async def reserve(self, logs: Sequence[Log], ask: Ask, tokens: int,
                      usd: Decimal) -> Denied | None: ...

    async def figures(self, logs: Sequence[Log]) -> list[Figures]:
        """Each limit's window as the store knows it (for the API and the page)."""


def reserve_here(logs: Sequence[Log], ask: Ask, tokens: int, usd: Decimal, now: float
                 ) -> Denied | None:
    """Synchronous: nothing runs between the check and the reservation."""
    limits = [lg.cfg for lg in logs]
    figures = [lg.figures(now) for lg in logs]
    retries: list[float | None] = [
        lg.retry(now, tokens, usd) if refused_dims(lg.cfg, f, tokens, usd) else 0.0
        for lg, f in zip(logs, figures, strict=True)]
    denied, view = decide(limits, figures, retries, tokens, usd)
    if denied is not None:
        return denied
    for lg in logs:
        lg.hold(now, ask.call_id, tokens, usd)
    ask.view = view
    return None


class LocalRates:
    """In this process: the check and the reservation are one synchronous step.
    `clock`: monotonic seconds (the tests pass their own, to age a window)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock

    async def reserve(self, logs: Sequence[Log], ask: Ask, tokens: int,
                      usd: Decimal) -> Denied | None:
        return reserve_here(logs, ask, tokens, usd, self.clock())

    async def figures(self, logs: Sequence[Log]) -> list[Figures]:
        now = self.clock()
        return [lg.figures(now) for lg in logs]


# --- the fleet's log ---

class RateLedger(Protocol):
    """What `RateCheck.restore` reads from the ledger (the SQLite backend)."""

    unavailable: tuple[type[BaseException], ...]

    async def rate_rows(self, match: Mapping[str, str], since: str
                        ) -> list[tuple[str, int | None, int | None, float | None]]: ...


class FleetRateLedger(Protocol):
    """What `FleetRates` asks of the shared ledger (the PostgreSQL backend)."""

    unavailable: tuple[type[BaseException], ...]

    async def admit(self, budgets: tuple[Sequence[str], Sequence[Decimal], Sequence[str],
                                         Decimal],
                    rates: Sequence[RateLimitConfig], call_id: str, tokens: int,
                    usd: Decimal, replica: str) -> dict[str, Any]: ...

    async def rate_state(self, names: Sequence[str]
                         ) -> dict[str, tuple[int, int, Decimal, Decimal]]: ...

    async def reset(self, broken: bool = False) -> None: ...


class FleetPlan:
    """A call's rate reservation in the fleet, not made yet: the budgets' round trip takes
    it along (`FleetBudgets.reserve`), or `alone()` makes it."""

    def __init__(self, store: FleetRates, logs: Sequence[Log], ask: Ask, tokens: int,
                 usd: Decimal) -> None:
        self.store, self.ask, self.tokens, self.usd = store, ask, tokens, usd
        self.logs = sorted(logs, key=lambda lg: lg.cfg.name)  # lock order: no deadlock
        self.limits = [lg.cfg for lg in self.logs]

    def taken(self) -> None:
        self.ask.rates = None

    def answered(self, result: Mapping[str, Any]) -> Denied | None:
        """The shared ledger's answer (the budgets' part is the caller's): the rate limit
        that refuses, or None (reserved there; kept here too, for a local decision while
        the database is away). The database's word stands: it decided under the locks."""
        rows = {r["name"]: r for r in result.get("limits") or ()}
        figures, retries = [], []
        for cfg in self.limits:
            r = rows.get(cfg.name) or {}
            figures.append(Figures(int(r.get("requests") or 0), int(r.get("tokens") or 0),
                                   Decimal(r.get("usd_minute") or 0),
                                   Decimal(r.get("usd_hour") or 0),
                                   None if r.get("newest_age") is None
                                   else float(r["newest_age"])))
            retries.append(None if r.get("never") else float(r.get("retry") or 0.0))
        if result.get("refused"):
            denied, view = decide(self.limits, figures, retries, self.tokens, self.usd)
            if denied is None:  # the same rules: only if a figure came back inexact
                i = next((i for i, cfg in enumerate(self.limits)
                          if rows.get(cfg.name, {}).get("refused")), 0)
                denied = denial(self.limits[i], ["window"], retries[i], view, self.tokens,
                                self.usd)
            return denied
        view = view_of(self.limits, figures, self.tokens, True)
        if result.get("budget") is None:
            now = self.store.clock()
            for lg in self.logs:
                lg.prune(now)  # this copy is read only while the database is away
                lg.hold(now, self.ask.call_id, self.tokens, self.usd)
            self.ask.view = view
        return None

    def local(self) -> Denied | None:
        """The database did not answer: decide on this replica's own log."""
        return reserve_here(self.logs, self.ask, self.tokens, self.usd, self.store.clock())

    async def alone(self) -> Denied | None:
        """No budget check took the reservation along: one round trip of its own."""
        self.taken()
        return await self.store.run(self, ((), (), (), Decimal(0)))


class FleetRates:
    """The fleet's: the log in the shared ledger; this replica's own admissions kept here
    too (settled by the records), for a decision while the database is away."""

    def __init__(self, ledger: FleetRateLedger,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ledger = ledger
        self.clock = clock
        self.replica = ""  # this replica's id in the fleet (set by proxy.fleet)

    async def reserve(self, logs: Sequence[Log], ask: Ask, tokens: int,
                      usd: Decimal) -> Denied | None:
        ask.rates = FleetPlan(self, logs, ask, tokens, usd)  # made with the budgets' trip
        return None

    async def figures(self, logs: Sequence[Log]) -> list[Figures]:
        """The fleet's windows; this replica's own while the database does not answer."""
        try:
            state = await self._ledger.rate_state([lg.cfg.name for lg in logs])
        except Exception as exc:
            log.warning("fleet rate limits unreachable (%s: %s): showing this replica's "
                        "own log", type(exc).__name__, exc)
            now = self.clock()
            return [lg.figures(now) for lg in logs]
        out = []
        for lg in logs:
            n, tokens, um, uh = state.get(lg.cfg.name, (0, 0, Decimal(0), Decimal(0)))
            out.append(Figures(n, tokens, um, uh, None))
        return out

    async def run(self, plan: FleetPlan, budgets: tuple[Sequence[str], Sequence[Decimal],
                                                        Sequence[str], Decimal]
                  ) -> Denied | None:
        """Rates alone (no budget): the round trip, or this replica's view without it."""
        try:
            result = await self._ledger.admit(budgets, plan.limits, plan.ask.call_id,
                                              plan.tokens, plan.usd, self.replica)
        except Exception as exc:  # any failure of the fleet's store: never the call's
            log.warning("fleet rate limits unreachable (%s: %s): deciding on this replica's "
                        "own log", type(exc).__name__, exc)
            if not isinstance(exc, self._ledger.unavailable):
                await self._ledger.reset(broken=True)
            return plan.local()
        return plan.answered(result)


class RateCheck:
    """Admission's rate-limit check, and the settling of each record against the logs."""

    name = "rate"

    def __init__(self, configs: Sequence[RateLimitConfig],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logs = [Log(c) for c in configs]
        self._keys: dict[str, Log] = {}  # a consumer key's own limits, by key id
        self.clock = clock
        self.store: RateStore = LocalRates(clock)

    per_key = True  # asked for every call that presents a consumer key (its own limits)

    @property
    def active(self) -> bool:
        """Asked for every call: some configured limit may match it."""
        return bool(self.logs)

    def open(self, store: RateStore) -> None:
        self.store = store

    async def restore(self, ledger: RateLedger) -> None:
        """The windows as the ledger holds them, for a log kept in this process (a SQLite
        ledger), so a restart does not forget the last minute's (or hour's) calls (a limit
        matching on `key` reads the rows' `consumer_key`). A key's own limits start empty."""
        wall, now = time.time(), self.clock()
        failures: tuple[type[BaseException], ...] = (*ledger.unavailable, ValueError)
        for lg in self.logs:
            span = HOUR if lg.hour is not None else MINUTE
            try:
                rows = await ledger.rate_rows(dict(lg.cfg.match), iso_utc(wall - span))
            except failures as exc:
                log.warning("could not restore rate limit %s from the ledger: %s",
                            lg.cfg.name, exc)
                continue
            for i, (started, status, tokens, cost) in enumerate(rows):
                at = now - (wall - datetime.fromisoformat(started).timestamp())
                if at <= now - span:
                    continue
                answered = status is not None
                lg.hold(at, f"restored-{i}", (tokens or 0) if answered else 0,
                        Decimal(repr(cost)) if answered and cost is not None else Decimal(0))

    def _key_log(self, key: Any) -> Log | None:
        limits = getattr(key, "limits", None)
        if limits is None:
            return None
        cfg = key_limit(key.id, limits)
        if cfg is None:
            return None
        lg = self._keys.get(key.id)
        if lg is None:
            lg = self._keys[key.id] = Log(cfg)
        else:  # its limits may have changed: the log stays, the limits are the key's now
            lg.cfg = cfg  # (a key has no usd_per_hour: its log never keeps the hour)
        return lg

    async def check(self, ask: Ask) -> Denied | None:
        logs = [lg for lg in self.logs if matches(lg.cfg, ask.context)]
        if ask.key is not None and (key_log := self._key_log(ask.key)) is not None:
            logs.append(key_log)
        if not logs:
            return None
        tokens, usd = 0, Decimal(0)
        if any(lg.cfg.tokens_per_minute is not None for lg in logs):
            tokens = await ask.tokens()
        if any(lg.cfg.usd_per_minute is not None or lg.cfg.usd_per_hour is not None
               for lg in logs):
            usd = await ask.worst_usd()
        return await self.store.reserve(logs, ask, tokens, usd)

    def release(self, call_id: str) -> None:
        """A call whose record will never come: settled as a call never answered (a
        request, no tokens, no dollars)."""
        for lg in (*self.logs, *self._keys.values()):
            if call_id in lg.by_call:
                lg.settle(call_id, True, 0, Decimal(0))

    def settle(self, record: CallRecord) -> None:
        """The call's record: what it reserved becomes what it used (0 when it was never
        answered), or, refused before forwarding, it leaves the log."""
        admitted = record.outcome != "rejected"
        answered = record.status_code is not None
        tokens = (record.total_tokens or 0) if answered else 0
        usd = (record.cost_usd or Decimal(0)) if answered else Decimal(0)
        call_id = record.call_id
        for lg in (*self.logs, *self._keys.values()):
            if call_id in lg.by_call:
                lg.settle(call_id, admitted, tokens, usd)

    def snapshot(self) -> list[dict[str, Any]]:
        """Each limit's window as this replica's own log has it."""
        now = self.clock()
        logs = [*self.logs, *self._keys.values()]
        return _described(logs, [lg.figures(now) for lg in logs])

    async def report(self) -> list[dict[str, Any]]:
        """Each limit's window as the store knows it (the fleet's on a shared ledger): the
        configured limits, then the consumer keys' this replica has seen."""
        logs = [*self.logs, *self._keys.values()]
        return _described(logs, await self.store.figures(logs))


def _described(logs: Sequence[Log], figures: Sequence[Figures]) -> list[dict[str, Any]]:
    out = []
    for lg, f in zip(logs, figures, strict=True):
        c = lg.cfg
        out.append({"name": c.name, "match": dict(c.match),
                    "requests_per_minute": c.requests_per_minute,
                    "tokens_per_minute": c.tokens_per_minute,
                    "usd_per_minute": c.usd_per_minute, "usd_per_hour": c.usd_per_hour,
                    "requests": f.requests, "tokens": f.tokens,
                    "usd_minute": float(f.usd_minute), "usd_hour": float(f.usd_hour)})
    return out


# --- the headers ---

@lru_cache(maxsize=1024)
def openai_duration(seconds: float) -> str:
    """A duration as OpenAI's `x-ratelimit-reset-*` writes it (Go style): `20ms`, `1s`,
    `17.28s`, `6m0s`, `1h0m0s`."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(math.ceil(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def headers_for(view: RateView | None, provider: str, now: float | None = None
                ) -> dict[str, str]:
    """The rate-limit headers in the caller's SDK's style: Anthropic's names
    (`anthropic-ratelimit-requests-limit`, `-remaining`, `-reset` as RFC 3339) for an
    Anthropic caller, OpenAI's (`x-ratelimit-limit-requests`, `-remaining-`, `-reset-` as a
    duration) for every other."""
    if view is None:
        return {}
    out: dict[str, str] = {}
    wall = time.time() if now is None else now
    for kind, dim in (("requests", view.requests), ("tokens", view.tokens)):
        if dim is None:
            continue
        if provider == "anthropic":
            out[f"anthropic-ratelimit-{kind}-limit"] = str(dim.limit)
            out[f"anthropic-ratelimit-{kind}-remaining"] = str(dim.remaining)
            out[f"anthropic-ratelimit-{kind}-reset"] = _rfc3339(wall + dim.reset)
        else:
            out[f"x-ratelimit-limit-{kind}"] = str(dim.limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(dim.remaining)
            out[f"x-ratelimit-reset-{kind}"] = openai_duration(dim.reset)
    return out
