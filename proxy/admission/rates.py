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
- `FleetRates` (PostgreSQL, `proxy/admission/rate_fleet.py`): in the shared ledger
  (`tb_rate_event`); its reservation joins the budgets' round trip (`tb_admit`), and a
  record's row write settles it. While the database does not answer, this replica decides on
  its own log (the calls it admitted).

The window arithmetic is `proxy/admission/rate_window.py`'s; the response's rate-limit
headers are `proxy/admission/rate_headers.py`'s.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from proxy.admission.base import Ask, Denied, matches
from proxy.admission.rate_headers import RateView, view_of
from proxy.admission.rate_window import HOUR, MINUTE, Figures, Log, refused_dims
from proxy.config import RateLimitConfig
from proxy.keys import KeyLimits
from proxy.record import CallRecord, iso_utc

__all__ = ["LocalRates", "RateCheck", "RateLedger", "RateStore", "decide", "denial",
           "reserve_here"]

log = logging.getLogger("tokenbooth.rates")


def key_limit(key_id: str, limits: KeyLimits) -> RateLimitConfig | None:
    """A consumer key's own limits as a rate limit named `key:<id>` (None: it has none)."""
    if limits.requests_per_minute is None and limits.tokens_per_minute is None \
            and limits.usd_per_minute is None:
        return None
    return RateLimitConfig(f"key:{key_id}", {"key": key_id}, limits.requests_per_minute,
                           limits.tokens_per_minute, limits.usd_per_minute)


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


class RateLedger(Protocol):
    """What `RateCheck.restore` reads from the ledger (the SQLite backend)."""

    unavailable: tuple[type[BaseException], ...]

    async def rate_rows(self, match: Mapping[str, str], since: str
                        ) -> list[tuple[str, int | None, int | None, float | None]]: ...


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
        if not self.logs and not self._keys:  # no limit configured, no key's seen
            return
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
