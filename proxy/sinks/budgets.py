"""Budgets: spend per matching window, restored from the ledger, kept current by records,
and the reservations admission (`proxy/admission.py`) makes before forwarding: spend + open
reservations + a call's worst case must stay within a blocking budget's limit, and the
worst case stays reserved until the call's record settles it, so concurrent calls cannot
overshoot. Alert budgets never block.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

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

    @property
    def limit(self) -> Decimal:
        return Decimal(repr(self.cfg.limit_usd))

    def roll(self, now: datetime) -> None:
        if self.window_end is not None and now >= self.window_end:
            self.spend = Decimal(0)
            self.window_end = window_bounds(self.cfg.window, now)[1]

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

    @property
    def message(self) -> str:
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

    def restore(self, db_path: str) -> None:
        """Spend so far in each window, from the ledger (blocking: run in a thread)."""
        try:
            conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error:
            return
        now = datetime.now(UTC)
        try:
            for s in self._states:
                start = window_bounds(s.cfg.window, now)[0]
                where, args = ["cost_usd IS NOT NULL"], []
                if start is not None:
                    where.append("started_at >= ?")
                    args.append(start.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
                for k, v in s.cfg.match.items():
                    if k in ("upstream", "model", "client", "agent", "session", "run"):
                        where.append(f"{k} = ?")
                    else:
                        where.append("json_extract(tags, ?) = ?")
                        args.append(f"$.{k}")
                    args.append(v)
                row = conn.execute(f"SELECT COALESCE(SUM(cost_usd), 0) FROM llm_usage "
                                   f"WHERE {' AND '.join(where)}", args).fetchone()
                s.spend = Decimal(repr(row[0]))
                self._spend.labels(s.cfg.name).set(float(s.spend))
        except sqlite3.Error as exc:
            log.warning("could not restore budget spend from the ledger: %s", exc)
        finally:
            conn.close()

    @staticmethod
    def context(tags: dict[str, str], upstream: str, model: str | None,
                client: str | None) -> dict[str, str | None]:
        """What a budget's `match` is compared with."""
        return {**tags, "upstream": upstream, "model": model, "client": client}

    def matching_blockers(self, ctx: dict[str, str | None]) -> list[_State]:
        return [s for s in self._states if s.cfg.action == "block" and _matches(s.cfg, ctx)]

    def reserve(self, states: list[_State], call_id: str, worst: Decimal) -> Denied | None:
        """Check every matching blocking budget, then reserve the call's worst case in all
        of them (synchronous: nothing runs in between), or name the budget that refuses."""
        now = datetime.now(UTC)
        for s in states:
            self._roll(s, now)
            if s.spend + sum(s.reserved.values(), Decimal(0)) + worst > s.limit or \
                    s.spend >= s.limit:
                retry = None if s.window_end is None else \
                    max(1, int((s.window_end - now).total_seconds()) + 1)
                return Denied(s.cfg.name, s.cfg.limit_usd, retry)
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
                        "reserved_usd": float(sum(s.reserved.values(), Decimal(0))),
                        "action": s.cfg.action, "match": dict(s.cfg.match),
                        "state": s.state()})
        return out

    async def aclose(self) -> None:
        return None
