"""The rate limits' log kept by the fleet, in the shared PostgreSQL ledger
(`tb_rate_event`): `FleetRates` is the store `RateCheck` opens on such a ledger. A call's
reservation is not made on its own: it is planned (`FleetPlan`) and joins the budgets' round
trip (`tb_admit`, `FleetBudgets.reserve`), or, when no budget check takes it along, is made
alone at the end; a record's row write settles it. The database decides under its locks and
its word stands; this replica keeps its own admissions too, and decides on that log while the
database does not answer. `FleetRateLedger` is what it asks of the backend."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

from proxy.admission.base import Ask, Denied
from proxy.admission.rate_headers import view_of
from proxy.admission.rate_window import Figures, Log
from proxy.admission.rates import decide, denial, reserve_here
from proxy.config import RateLimitConfig

__all__ = ["FleetPlan", "FleetRateLedger", "FleetRates"]

log = logging.getLogger("tokenbooth.rates")


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

