"""Budgets: spend per matching window, restored from the ledger, kept current by records,
and the reservations admission (`proxy/admission.py`) makes before forwarding: spend + open
reservations + a call's worst case must stay within a blocking budget's limit, and the
worst case stays reserved until the call's record settles it, so concurrent calls cannot
overshoot. Alert budgets never block.

On a shared (PostgreSQL) ledger the fleet is the truth: reservations are made there in one
round trip, the ledger's write transaction charges each row to the budgets it matches, and
`sync()` (every second) reads the fleet's spend, so every replica shows the same number.
Should the database not answer, a budget with `on_ledger_down: local` (the default) decides
on this replica's own view: the fleet's spend and reservations as last read, plus what this
replica has reserved and spent since (a finished call's cost counts here until its row is
written and a later `sync()` has read it back); one with `refuse` refuses matching calls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from proxy.backends import LedgerBackend
from proxy.backends.postgres import PostgresBackend
from proxy.config import BudgetConfig
from proxy.record import CallRecord

__all__ = ["Budgets", "Denied", "window_bounds"]

log = logging.getLogger("tokenbooth.budgets")


def window_bounds(window: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    """UTC calendar window containing `now`: (start, end); `total` has no bounds."""
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


@dataclass
class _State:
    cfg: BudgetConfig
    spend: Decimal = Decimal(0)
    reserved: dict[str, Decimal] = field(default_factory=dict)
    window_end: datetime | None = None
    fleet_reserved: Decimal = Decimal(0)  # other replicas' too (shared ledger)
    # Shared ledger: costs of this replica's finished calls the fleet's spend may not hold
    # yet, by call id: `unwritten` until the ledger writes the row, then `written` until a
    # `sync()` that started after the write has read the spend back.
    unwritten: dict[str, Decimal] = field(default_factory=dict)
    written: dict[str, Decimal] = field(default_factory=dict)

    @property
    def limit(self) -> Decimal:
        return Decimal(repr(self.cfg.limit_usd))

    def roll(self, now: datetime) -> None:
        if self.window_end is not None and now >= self.window_end:
            self.spend = Decimal(0)
            self.fleet_reserved = Decimal(0)
            self.unwritten.clear()
            self.written.clear()
            self.window_end = window_bounds(self.cfg.window, now)[1]

    def local_spend(self) -> Decimal:
        """The spend admission decides on: the fleet's as last read (or this replica's own
        without a shared ledger), plus costs that may not have reached it yet."""
        return sum(self.written.values(), sum(self.unwritten.values(), self.spend))

    def window_start(self, now: datetime) -> str:
        """The current window's start as the ledger writes it ('' for `total`)."""
        start = window_bounds(self.cfg.window, now)[0]
        return "" if start is None else start.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def state(self) -> str:
        total = self.spend
        if total >= self.limit:
            return "exceeded"
        if total >= self.limit * Decimal("0.8"):
            return "warning"
        return "ok"


@dataclass(frozen=True)
class Denied:
    name: str
    limit_usd: float
    retry_after_seconds: int | None = None  # until the window ends; None for `total`
    ledger_down: bool = False  # `on_ledger_down: refuse` and the shared ledger is away

    @property
    def message(self) -> str:
        if self.ledger_down:
            return (f"Tokenbooth budget '{self.name}' cannot be checked: the shared ledger "
                    f"is unreachable and the budget refuses calls until it answers "
                    f"(on_ledger_down: refuse); the request was not sent.")
        return (f"Tokenbooth budget '{self.name}' (limit ${self.limit_usd:g}) is exhausted "
                f"for this window; the request was not sent.")


def _matches(cfg: BudgetConfig, ctx: dict[str, str | None]) -> bool:
    return all(ctx.get(k) == v for k, v in cfg.match.items())


class Budgets:
    name = "budgets"

    def __init__(self, configs: tuple[BudgetConfig, ...], registry: CollectorRegistry) -> None:
        now = datetime.now(UTC)
        self._states = [_State(c, window_end=window_bounds(c.window, now)[1]) for c in configs]
        self.blocking = any(c.action == "block" for c in configs)
        self._spend = Gauge("tokenbooth_budget_spend_usd", "Spend in the budget's window.",
                            ("budget",), registry=registry)
        self._limit = Gauge("tokenbooth_budget_limit_usd", "The budget's limit.", ("budget",),
                            registry=registry)
        self._window_end = Gauge("tokenbooth_budget_window_end_timestamp_seconds",
                                 "When the budget's current window ends (0 for total).",
                                 ("budget",), registry=registry)
        self._fleet: PostgresBackend | None = None
        self.replica = ""  # this replica's id in the fleet (shared ledger)
        for s in self._states:
            self._limit.labels(s.cfg.name).set(s.cfg.limit_usd)
            self._spend.labels(s.cfg.name).set(0)
            self._set_window(s)

    def _set_window(self, s: _State) -> None:
        end = s.window_end.timestamp() if s.window_end is not None else 0
        self._window_end.labels(s.cfg.name).set(end)

    def _roll(self, s: _State, now: datetime) -> None:
        before = s.window_end
        s.roll(now)
        if s.window_end != before:
            self._spend.labels(s.cfg.name).set(float(s.spend))
            self._set_window(s)

    async def restore(self, backend: LedgerBackend) -> None:
        """Spend so far in each window, from the ledger: the roll-up's whole hours (a window
        starts on the hour), raw rows only where a budget matches on a tag or session. On a
        shared ledger, this replica's budgets are defined there (spend counted from the
        ledger for a new or changed one), then read back."""
        now = datetime.now(UTC)
        if isinstance(backend, PostgresBackend):
            self._fleet = backend
            await backend.define_budgets([(s.cfg.name, s.cfg.window, dict(s.cfg.match),
                                           s.window_start(now)) for s in self._states])
            await self.sync()
            return
        try:
            for s in self._states:
                s.spend = await backend.spend(dict(s.cfg.match), s.window_start(now) or None)
                self._spend.labels(s.cfg.name).set(float(s.spend))
        except (*backend.unavailable, ValueError) as exc:
            log.warning("could not restore budget spend from the ledger: %s", exc)

    async def sync(self) -> None:
        """Read the fleet's spend and reservations (shared ledger only)."""
        if self._fleet is None or not self._states:
            return
        now = datetime.now(UTC)
        for s in self._states:
            self._roll(s, now)
        read = [list(s.written) for s in self._states]  # written before this read began
        state = await self._fleet.budget_state([(s.cfg.name, s.window_start(now))
                                                for s in self._states])
        for s, ids in zip(self._states, read, strict=True):
            s.spend, s.fleet_reserved = state.get(s.cfg.name, (Decimal(0), Decimal(0)))
            for call_id in ids:  # the spend just read holds them
                s.written.pop(call_id, None)
            self._spend.labels(s.cfg.name).set(float(s.spend))

    def rows_written(self, call_ids: list[str]) -> None:
        """The ledger wrote these rows (shared ledger): the fleet's spend holds their cost
        from now on, so the next `sync()` reads it back and this replica stops adding it."""
        for s in self._states:
            if s.unwritten:
                for call_id in call_ids:
                    cost = s.unwritten.pop(call_id, None)
                    if cost is not None:
                        s.written[call_id] = cost

    @staticmethod
    def context(tags: dict[str, str], upstream: str, model: str | None,
                client: str | None) -> dict[str, str | None]:
        """What a budget's `match` is compared with."""
        return {**tags, "upstream": upstream, "model": model, "client": client}

    def matching_blockers(self, ctx: dict[str, str | None]) -> list[_State]:
        return [s for s in self._states if s.cfg.action == "block" and _matches(s.cfg, ctx)]

    async def reserve(self, states: list[_State], call_id: str,
                      worst: Decimal) -> Denied | None:
        """Reserve the call's worst case in every matching blocking budget, or name the
        budget that refuses: in the fleet's ledger when it is shared, else here."""
        if self._fleet is not None:
            now = datetime.now(UTC)
            ordered = sorted(states, key=lambda s: s.cfg.name)  # lock order: no deadlock
            try:
                name = await self._fleet.reserve(
                    [s.cfg.name for s in ordered], [s.limit for s in ordered],
                    [s.window_start(now) for s in ordered], call_id, worst, self.replica)
            except Exception as exc:  # any failure of the fleet's store: never the call's
                refusing = [s for s in ordered if s.cfg.on_ledger_down == "refuse"]
                log.warning("fleet budgets unreachable (%s: %s): %s", type(exc).__name__, exc,
                            f"budget {refusing[0].cfg.name} refuses (on_ledger_down: refuse)"
                            if refusing else "deciding on this replica's last view")
                if not isinstance(exc, self._fleet.unavailable):
                    await self._fleet.reset(broken=True)  # the driver is in a bad state
                if refusing:
                    s = refusing[0]
                    return Denied(s.cfg.name, s.cfg.limit_usd, 1, ledger_down=True)
            else:
                if name is None:
                    return None
                s = next(s for s in ordered if s.cfg.name == name)
                return self._denied(s, now)
        return self._reserve_here(states, call_id, worst)

    def _denied(self, s: _State, now: datetime) -> Denied:
        retry = None if s.window_end is None else \
            max(1, int((s.window_end - now).total_seconds()) + 1)
        return Denied(s.cfg.name, s.cfg.limit_usd, retry)

    def _reserve_here(self, states: list[_State], call_id: str,
                      worst: Decimal) -> Denied | None:
        """Synchronous: nothing runs between the check and the reservation."""
        now = datetime.now(UTC)
        for s in states:
            self._roll(s, now)
            held = sum(s.reserved.values(), s.fleet_reserved)
            spend = s.local_spend()
            if spend + held + worst > s.limit or spend >= s.limit:
                return self._denied(s, now)
        if worst:
            for s in states:
                s.reserved[call_id] = worst
        return None

    async def handle(self, record: CallRecord) -> None:
        if not self._states:
            return
        ctx = self.context(record.tags, record.upstream, record.model, record.client)
        ctx_req = {**ctx, "model": record.request_model}
        now = datetime.now(UTC)
        for s in self._states:
            reserved = s.reserved.pop(record.call_id, None)
            if reserved is None and not (_matches(s.cfg, ctx) or _matches(s.cfg, ctx_req)):
                continue
            self._roll(s, now)
            if self._fleet is not None:
                # The ledger's write charges the fleet's spend and `sync()` reads it back;
                # until then (the database may be away for a while) it counts here.
                if record.cost_usd is not None and s.cfg.action == "block":
                    s.unwritten[record.call_id] = record.cost_usd
                continue
            if record.cost_usd is not None:
                s.spend += record.cost_usd
            self._spend.labels(s.cfg.name).set(float(s.spend))

    def snapshot(self) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        out = []
        for s in self._states:
            self._roll(s, now)
            out.append({"name": s.cfg.name, "window": s.cfg.window,
                        "limit_usd": s.cfg.limit_usd, "spend_usd": float(s.spend),
                        "reserved_usd": float(s.fleet_reserved if self._fleet else
                                              sum(s.reserved.values(), Decimal(0))),
                        "action": s.cfg.action, "match": dict(s.cfg.match),
                        "state": s.state()})
        return out

    async def aclose(self) -> None:
        return None
