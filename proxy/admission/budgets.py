"""The budgets' check: spend + open reservations + a call's worst case must stay within a
blocking budget's limit, and the worst case stays reserved until the call's record settles
it, so concurrent calls cannot overshoot. Alert budgets never block (they are only counted).

Where spend and reservations are kept is the store's, injected once the ledger is open:
- `LocalBudgets`: in this process (the SQLite ledger): spend restored from the ledger at
  start, then kept by the records; the check and the reservation are one synchronous step.
- `FleetBudgets`: the fleet's (a shared PostgreSQL ledger): reservations are made there in
  one round trip (`tb_reserve`), the ledger's write transaction charges each row to the
  budgets it matches, and `sync()` (every second) reads the fleet's spend, so every replica
  shows the same number. Should the database not answer, a budget with `on_ledger_down:
  local` (the default) decides on this replica's own view: the fleet's spend and
  reservations as last read, plus what this replica has reserved and spent since (a
  finished call's cost counts here until its row is written and a later `sync()` has read
  it back); one with `refuse` refuses matching calls.

A layered budget (`windows:`) is one `Window` per window, each keyed `<name>:<window id>`
(`team:day`, `team:rolling_5h`), so the stores keep, reserve and settle each as they would
a single-window budget (keyed by its name alone); a call reserves in all of them at once
(one round trip on PostgreSQL). A rolling window of N hours is the current clock hour and
the N - 1 before it: its spend is kept per hour (here, and in `tb_budget_spend` on
PostgreSQL) and it moves on each hour boundary, when its oldest hour ages out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any, Protocol

from proxy.admission.base import Ask, Denied, context, matches
from proxy.config import BudgetConfig
from proxy.config.model import BUDGET_ROLLING
from proxy.record import CallRecord
from proxy.tasks import spawn
from proxy.value import value

__all__ = ["BudgetCheck", "BudgetStore", "FleetBudgets", "LocalBudgets", "Window",
           "WindowSpec", "expand", "matches", "window_bounds"]

log = logging.getLogger("tokenbooth.budgets")


def window_bounds(window: str, now: datetime,
                  hours: int | None = None) -> tuple[datetime | None, datetime | None]:
    """UTC calendar window containing `now`: (start, end); `total` has no bounds; a rolling
    window of `hours` starts `hours - 1` whole hours before the current one and moves on at
    the next hour."""
    if window == BUDGET_ROLLING:
        hour = now.replace(minute=0, second=0, microsecond=0)
        return hour - timedelta(hours=(hours or 1) - 1), hour + timedelta(hours=1)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "day":
        return day, day + timedelta(days=1)
    if window == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if window == "month":
        start = day.replace(day=1)
        nxt = (start + timedelta(days=32)).replace(day=1)
        return start, nxt
    return None, None


@value
class WindowSpec:
    """One window of one budget, as the stores see it: `name` is its key (the budget's name
    for the single-window form, `<budget>:<window id>` for each of a layered budget's)."""

    name: str
    budget: str
    id: str  # day | week | month | total | rolling_<n>h
    match: Mapping[str, str]
    limit_usd: float
    window: str
    action: str
    on_ledger_down: str = "local"
    hours: int | None = None
    thresholds: tuple[float, ...] = ()
    notify: tuple[str, ...] = ()

    @property
    def period(self) -> str:
        """How the shared ledger names its period (`rolling:<hours>` for a rolling one)."""
        return f"{BUDGET_ROLLING}:{self.hours}" if self.window == BUDGET_ROLLING else self.window


def expand(cfg: BudgetConfig) -> list[WindowSpec]:
    """A budget's windows, each enforced on its own."""
    return [WindowSpec(f"{cfg.name}:{w.id}" if cfg.layered else cfg.name, cfg.name, w.id,
                       cfg.match, w.limit_usd, w.window, w.action, cfg.on_ledger_down,
                       w.hours, cfg.thresholds, cfg.notify)
            for w in cfg.all_windows()]


def threshold_tag(t: float) -> str:
    """How a window remembers that a threshold's notice was offered."""
    return f"threshold:{t:g}"


def hour_of(ts: str) -> str:
    """The hour an ISO-8601 UTC timestamp falls in, as the ledger writes it."""
    return ts[:13] + ":00:00.000Z"


@dataclass
class Window:
    """One budget window in its current span: its spend and what is held against it."""

    cfg: WindowSpec
    spend: Decimal = Decimal(0)
    reserved: dict[str, Decimal] = field(default_factory=dict)  # held here, by call id
    held: Decimal = Decimal(0)  # the sum of `reserved`, kept as it changes (O(1) per call)
    window_end: datetime | None = None
    fleet_reserved: Decimal = Decimal(0)  # other replicas' too (shared ledger)
    # Shared ledger: costs of this replica's finished calls the fleet's spend may not hold
    # yet, by call id: `unwritten` until the ledger writes the row, then `written` until a
    # `sync()` that started after the write has read the spend back.
    unwritten: dict[str, Decimal] = field(default_factory=dict)
    written: dict[str, Decimal] = field(default_factory=dict)
    # A rolling window kept in this process: spend per hour (its `spend` is their sum)
    hourly: dict[str, Decimal] = field(default_factory=dict)
    noticed: set[str] = field(default_factory=set)  # notices offered in the current span

    def hold(self, call_id: str, worst: Decimal) -> None:
        """Reserve `worst` for the call until its record releases it."""
        self.held += worst - self.reserved.get(call_id, 0)
        self.reserved[call_id] = worst

    def release(self, call_id: str) -> Decimal | None:
        """The call's reservation, released (None: it held nothing here)."""
        worst = self.reserved.pop(call_id, None)
        if worst is not None:
            self.held = self.held - worst if self.reserved else Decimal(0)
        return worst

    @cached_property
    def limit(self) -> Decimal:
        """The limit as the exact decimal it was written as (read a few times a call)."""
        return Decimal(repr(self.cfg.limit_usd))

    def bounds(self, now: datetime) -> tuple[datetime | None, datetime | None]:
        return window_bounds(self.cfg.window, now, self.cfg.hours)

    def roll(self, now: datetime) -> None:
        if self.window_end is not None and now >= self.window_end:
            start, self.window_end = self.bounds(now)
            if self.cfg.window != BUDGET_ROLLING:  # a rolling window's are told on crossing
                self.noticed.clear()
            if self.hourly and start is not None:  # the hours still in the window stay
                first = start.strftime("%Y-%m-%dT%H:00:00.000Z")
                for hour in [h for h in self.hourly if h < first]:
                    del self.hourly[hour]
                self.spend = sum(self.hourly.values(), Decimal(0))
                return
            self.spend = Decimal(0)
            self.fleet_reserved = Decimal(0)
            self.unwritten.clear()
            self.written.clear()

    def reached(self) -> None:
        """Every threshold the spend has reached already counts as told (at start: a
        rolling window's threshold is told when the spend crosses it, and a restart is
        not a crossing)."""
        spend = self.local_spend()
        for t in self.cfg.thresholds:
            if spend >= self.limit * Decimal(repr(t)):
                self.noticed.add(threshold_tag(t))

    def local_spend(self) -> Decimal:
        """The spend a local decision reads: the fleet's as last read (or this replica's own
        without a shared ledger), plus costs that may not have reached it yet."""
        if not self.written and not self.unwritten:  # a local ledger's, always
            return self.spend
        return sum(self.written.values(), sum(self.unwritten.values(), self.spend))

    def window_start(self, now: datetime) -> str:
        """The current window's start as the ledger writes it ('' for `total`)."""
        start = self.bounds(now)[0]
        return "" if start is None else start.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def state(self) -> str:
        total = self.spend
        if total >= self.limit:
            return "exceeded"
        if total >= self.limit * Decimal("0.8"):
            return "warning"
        return "ok"

    def denied(self, now: datetime) -> Denied:
        retry = None if self.window_end is None else \
            max(1, int((self.window_end - now).total_seconds()) + 1)
        return Denied(self.cfg.name, self.cfg.limit_usd, retry)


def reserve_here(windows: Sequence[Window], call_id: str, worst: Decimal) -> Denied | None:
    """Synchronous: nothing runs between the check and the reservation."""
    now = datetime.now(UTC)
    for w in windows:
        w.roll(now)
        held = w.held + w.fleet_reserved
        spend = w.local_spend()
        if spend + held + worst > w.limit or spend >= w.limit:
            return w.denied(now)
    if worst:
        for w in windows:
            w.hold(call_id, worst)
    return None


class BudgetStore(Protocol):
    """Where budgets' spend and reservations are kept and decided."""

    async def restore(self, windows: Sequence[Window]) -> None:
        """Spend so far in each window (called once, with the windows it keeps)."""

    async def reserve(self, windows: Sequence[Window], call_id: str,
                      worst: Decimal, rates: Any = None) -> Denied | None:
        """Reserve `worst` in every window, or the refusal of the first that cannot (and,
        in the fleet's store, the call's rate-limit reservation `rates` in the same trip)."""

    def settle(self, window: Window, call_id: str, cost: Decimal | None,
               started_at: str | None = None) -> None:
        """A finished call's cost counts against `window` (its reservation is released);
        `started_at` places it in a rolling window's hour."""

    def reserved_usd(self, window: Window) -> Decimal:
        """What is held against `window` as the store knows it."""


class SpendLedger(Protocol):
    """What `LocalBudgets` reads from the ledger (the SQLite backend)."""

    unavailable: tuple[type[BaseException], ...]

    async def spend(self, match: Mapping[str, str], since: str | None) -> Decimal: ...

    async def spend_by_hour(self, match: Mapping[str, str],
                            since: str) -> dict[str, Decimal]: ...


class FleetLedger(Protocol):
    """What `FleetBudgets` asks of the shared ledger (the PostgreSQL backend)."""

    unavailable: tuple[type[BaseException], ...]

    async def define_budgets(self, budgets: Sequence[tuple[str, str, dict[str, str],
                                                           str | None]]) -> None: ...

    async def reserve(self, names: Sequence[str], limits: Sequence[Decimal],
                      windows: Sequence[str], call_id: str, worst: Decimal,
                      replica: str) -> str | None: ...

    async def budget_state(self, keys: Sequence[tuple[str, str]]
                           ) -> dict[str, tuple[Decimal, Decimal]]: ...

    async def admit(self, budgets: tuple[Sequence[str], Sequence[Decimal], Sequence[str],
                                         Decimal],
                    rates: Sequence[Any], call_id: str, tokens: int, usd: Decimal,
                    replica: str) -> dict[str, Any]: ...

    async def reset(self, broken: bool = False) -> None: ...

    async def forget_call(self, call_id: str) -> None: ...


class LocalBudgets:
    """In this process: spend restored from the ledger (if any), then kept by the records.
    The roll-up's whole hours are read (a window starts on the hour), raw rows only where a
    budget matches on a tag or session."""

    def __init__(self, ledger: SpendLedger | None = None) -> None:
        self._ledger = ledger

    async def restore(self, windows: Sequence[Window]) -> None:
        if self._ledger is None:
            return
        now = datetime.now(UTC)
        failures: tuple[type[BaseException], ...] = (*self._ledger.unavailable, ValueError)
        try:
            for w in windows:
                if w.cfg.window == BUDGET_ROLLING:
                    w.hourly = await self._ledger.spend_by_hour(dict(w.cfg.match),
                                                                w.window_start(now))
                    w.spend = sum(w.hourly.values(), Decimal(0))
                    continue
                w.spend = await self._ledger.spend(dict(w.cfg.match),
                                                   w.window_start(now) or None)
        except failures as exc:
            log.warning("could not restore budget spend from the ledger: %s", exc)

    async def reserve(self, windows: Sequence[Window], call_id: str,
                      worst: Decimal, rates: Any = None) -> Denied | None:
        return reserve_here(windows, call_id, worst)

    def settle(self, window: Window, call_id: str, cost: Decimal | None,
               started_at: str | None = None) -> None:
        if cost is not None:
            window.spend += cost
            if window.cfg.window == BUDGET_ROLLING:
                hour = hour_of(started_at) if started_at else \
                    datetime.now(UTC).strftime("%Y-%m-%dT%H:00:00.000Z")
                window.hourly[hour] = window.hourly.get(hour, Decimal(0)) + cost

    def reserved_usd(self, window: Window) -> Decimal:
        return window.held


class FleetBudgets:
    """The fleet's: budgets defined in the shared ledger (spend counted from the ledger for
    a new or changed one), reservations made there, spend read back by `sync()`."""

    takes_rates = True  # a call's fleet rate-limit reservation rides on its round trip

    def __init__(self, ledger: FleetLedger) -> None:
        self._ledger = ledger
        self._windows: Sequence[Window] = ()
        self.replica = ""  # this replica's id in the fleet (set by proxy.fleet)

    async def restore(self, windows: Sequence[Window]) -> None:
        self._windows = windows
        now = datetime.now(UTC)
        await self._ledger.define_budgets([(w.cfg.name, w.cfg.period, dict(w.cfg.match),
                                            w.window_start(now)) for w in windows])
        await self.sync()

    async def sync(self) -> None:
        """Read the fleet's spend and reservations."""
        if not self._windows:
            return
        now = datetime.now(UTC)
        for w in self._windows:
            w.roll(now)
        read = [list(w.written) for w in self._windows]  # written before this read began
        state = await self._ledger.budget_state([(w.cfg.name, w.window_start(now))
                                                 for w in self._windows])
        for w, ids in zip(self._windows, read, strict=True):
            w.spend, w.fleet_reserved = state.get(w.cfg.name, (Decimal(0), Decimal(0)))
            for call_id in ids:  # the spend just read holds them
                w.written.pop(call_id, None)

    def rows_written(self, call_ids: list[str]) -> None:
        """The ledger wrote these rows: the fleet's spend holds their cost from now on, so
        the next `sync()` reads it back and this replica stops adding it."""
        for w in self._windows:
            if w.unwritten:
                for call_id in call_ids:
                    cost = w.unwritten.pop(call_id, None)
                    if cost is not None:
                        w.written[call_id] = cost

    async def reserve(self, windows: Sequence[Window], call_id: str,
                      worst: Decimal, rates: Any = None) -> Denied | None:
        """In the fleet's ledger, one round trip (with the call's rate-limit reservation,
        `rates`, when it has one: one SQL call decides both); this replica's view if it does
        not answer (or a refusal, for a budget with `on_ledger_down: refuse`)."""
        now = datetime.now(UTC)
        ordered = sorted(windows, key=lambda w: w.cfg.name)  # lock order: no deadlock
        names = [w.cfg.name for w in ordered]
        limits = [w.limit for w in ordered]
        starts = [w.window_start(now) for w in ordered]
        try:
            if rates is None:
                name = await self._ledger.reserve(names, limits, starts, call_id, worst,
                                                  self.replica)
            else:
                result = await self._ledger.admit((names, limits, starts, worst),
                                                  rates.limits, call_id, rates.tokens,
                                                  rates.usd, self.replica)
        except Exception as exc:  # any failure of the fleet's store: never the call's
            refusing = [w for w in ordered if w.cfg.on_ledger_down == "refuse"]
            log.warning("fleet budgets unreachable (%s: %s): %s", type(exc).__name__, exc,
                        f"budget {refusing[0].cfg.name} refuses (on_ledger_down: refuse)"
                        if refusing else "deciding on this replica's last view")
            if not isinstance(exc, self._ledger.unavailable):
                await self._ledger.reset(broken=True)  # the driver is in a bad state
            if rates is not None:
                local: Denied | None = rates.local()
                if local is not None:
                    return local
            if refusing:
                w = refusing[0]
                return Denied(w.cfg.name, w.cfg.limit_usd, 1, ledger_down=True)
            return reserve_here(windows, call_id, worst)
        if rates is not None:
            answered: Denied | None = rates.answered(result)
            if answered is not None:
                return answered
            name = result.get("budget")
        if name is None:
            return None
        return next(w for w in ordered if w.cfg.name == name).denied(now)

    def settle(self, window: Window, call_id: str, cost: Decimal | None,
               started_at: str | None = None) -> None:
        # The ledger's write charges the fleet's spend and `sync()` reads it back; until
        # then (the database may be away for a while) it counts here.
        if cost is not None and window.cfg.action == "block":
            window.unwritten[call_id] = cost

    def reserved_usd(self, window: Window) -> Decimal:
        return window.fleet_reserved

    def forget(self, call_id: str) -> None:
        """A call whose row will never be written: its reservations in the shared ledger
        go, and its rate-limit events settle as never answered (in the background)."""
        spawn(self._forget(call_id), name="tokenbooth-forget-call")

    async def _forget(self, call_id: str) -> None:
        try:
            await self._ledger.forget_call(call_id)
        except Exception as exc:  # the replica's reservations expire with it, at worst
            log.warning("could not release dropped call %s in the shared ledger (%s: %s)",
                        call_id, type(exc).__name__, exc)


class BudgetCheck:
    """Admission's budget check, and the settling of each record against the budgets."""

    name = "budget"

    def __init__(self, configs: Sequence[BudgetConfig]) -> None:
        now = datetime.now(UTC)
        self.windows = [Window(s, window_end=window_bounds(s.window, now, s.hours)[1])
                        for c in configs for s in expand(c)]
        self.active = any(w.cfg.action == "block" for w in self.windows)
        self.store: BudgetStore = LocalBudgets()  # until the ledger is open: `open()`

    async def open(self, store: BudgetStore) -> None:
        """Keep spend and reservations in `store` from now on, restored from it."""
        self.store = store
        await store.restore(self.windows)
        for w in self.windows:
            if w.cfg.window == BUDGET_ROLLING:
                w.reached()

    async def check(self, ask: Ask) -> Denied | None:
        """Reserve the call's worst case in every blocking budget it matches, or the
        refusal of the budget that cannot take it."""
        windows = []
        for w in self.windows:  # a loop, not a comprehension: one frame fewer a call
            if w.cfg.action == "block" and matches(w.cfg, ask.context):
                windows.append(w)
        rates = ask.rates if getattr(self.store, "takes_rates", False) else None
        if rates is not None:
            rates.taken()  # decided in this round trip
        elif not windows:
            return None
        worst = await ask.worst_usd() if windows else Decimal(0)
        return await self.store.reserve(windows, ask.call_id, worst, rates)

    def release(self, call_id: str) -> None:
        """A call whose record will never come: its reservations released (in the shared
        ledger too, in the background), nothing counted."""
        for w in self.windows:
            w.release(call_id)
        forget = getattr(self.store, "forget", None)
        if forget is not None:
            forget(call_id)

    def settle(self, record: CallRecord) -> list[Window]:
        """The call's record: release its reservations and count its cost in every budget
        it matches (by the model answered or the model asked for); the windows it touched."""
        touched: list[Window] = []
        if not self.windows:
            return touched
        ctx = context(record.tags, record.upstream, record.model, record.client,
                      record.consumer_key)
        ctx_req: dict[str, str | None] | None = None  # made only if a match needs it
        now = datetime.now(UTC)
        for w in self.windows:
            reserved = w.release(record.call_id)
            if reserved is None and not matches(w.cfg, ctx):
                if ctx_req is None:
                    ctx_req = {**ctx, "model": record.request_model}
                if not matches(w.cfg, ctx_req):
                    continue
            w.roll(now)
            self.store.settle(w, record.call_id, record.cost_usd, record.started_at)
            touched.append(w)
        return touched
