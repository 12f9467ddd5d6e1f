"""The budgets sink: each record settles its call against the budgets (the reservation
admission made is released, the cost counted; `proxy/admission/budgets.py` decides how and
where) and against the rate limits (what it reserved becomes what it used;
`proxy/admission/rates.py`), and the budgets are served as gauges and as `/api/budgets`.
It decides nothing.
With a `Notifier`, the windows a record touched are checked for notices (thresholds crossed,
a forecast of exhaustion: `proxy.notices.due`), and every window once a second.

A layered budget's windows are one gauge series each, `budget` being the window's key
(`team:day`, `team:rolling_5h`); a single-window budget's is its name, as before."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from proxy.admission.budgets import BudgetCheck, Window
from proxy.admission.rates import RateCheck
from proxy.notices import Notice, Notifier, due, iso
from proxy.record import CallRecord

__all__ = ["Budgets"]


class Budgets:
    name = "budgets"

    def __init__(self, check: BudgetCheck, registry: CollectorRegistry,
                 notifier: Notifier | None = None, rates: RateCheck | None = None) -> None:
        self._check = check
        self._rates = rates
        self.notifier = notifier
        if notifier is not None:
            notifier.source = self.due
        registry.register(self)

    def observe(self, record: CallRecord) -> None:
        touched = self._check.settle(record)
        if self._rates is not None:
            self._rates.settle(record)
        if self.notifier is not None and touched:
            now = datetime.now(UTC)
            notices: list[Notice] = []
            for w in touched:  # a loop, not a comprehension: usually one window, no notice
                notices += due(w, now)
            if notices:  # offering none does nothing
                self.notifier.offer(notices)

    def lost(self, call_id: str) -> None:
        """A call whose record will never come (the recorder's queue was full): what
        admission holds for it is released now (its budget reservations; its rate-limit
        reservations settle as a call never answered), not held for good."""
        self._check.release(call_id)
        if self._rates is not None:
            self._rates.release(call_id)

    def due(self) -> list[Notice]:
        """Every window's newly earned notices (what other replicas spent counts too)."""
        now = datetime.now(UTC)
        return [n for w in self._check.windows for n in due(w, now)]

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("tokenbooth_budget_spend_usd",
                                  "Spend in the budget's window.", labels=("budget",)),
                GaugeMetricFamily("tokenbooth_budget_limit_usd", "The budget's limit.",
                                  labels=("budget",)),
                GaugeMetricFamily("tokenbooth_budget_window_end_timestamp_seconds",
                                  "When the budget's current window ends (0 for total).",
                                  labels=("budget",)))

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        """Read at scrape time (on the event loop, as every reader of the windows)."""
        spend, limit, window_end = self._families()
        now = datetime.now(UTC)
        for w in self._check.windows:
            w.roll(now)
            spend.add_metric((w.cfg.name,), float(w.spend))
            limit.add_metric((w.cfg.name,), w.cfg.limit_usd)
            window_end.add_metric((w.cfg.name,), w.window_end.timestamp()
                                  if w.window_end is not None else 0)
        return iter((spend, limit, window_end))

    def windows(self) -> list[Window]:
        """Each budget in its current window (what /api/me reads for a key)."""
        return list(self._check.windows)

    def snapshot(self) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        out = []
        store = self._check.store
        for w in self._check.windows:
            w.roll(now)
            out.append({"name": w.cfg.budget, "window": w.cfg.id,
                        "limit_usd": w.cfg.limit_usd, "spend_usd": float(w.spend),
                        "reserved_usd": float(store.reserved_usd(w)),
                        "action": w.cfg.action, "match": dict(w.cfg.match),
                        "state": w.state(), "key": w.cfg.name,
                        "resets_at": iso(w.window_end) if w.window_end else None,
                        "thresholds": list(w.cfg.thresholds), "notify": list(w.cfg.notify)})
        return out

    async def aclose(self) -> None:
        return None  # the notifier is closed by the app, before the ledger
