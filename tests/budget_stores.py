"""Budgets on a real ledger, wired as make_app() wires them: the in-process store over a
SQLite file, or the fleet's store over a PostgreSQL database (this replica heartbeating).
For tests/test_admission.py and tests/sinks/test_budgets.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from proxy.admission.budgets import BudgetCheck, BudgetStore, FleetBudgets, LocalBudgets
from proxy.backends import LedgerBackend, open_backend
from proxy.config import BudgetConfig
from proxy.record import CallRecord

__all__ = ["BudgetLedger", "budget", "ledger_target", "open_budgets"]

REPLICA = "test-replica"


def budget(name: str, limit_usd: float, match: dict[str, str] | None = None,
           window: str = "day", action: str = "block",
           on_ledger_down: str = "local") -> BudgetConfig:
    return BudgetConfig(name, match or {}, limit_usd, window, action, on_ledger_down)


class BudgetLedger:
    def __init__(self, backend: LedgerBackend, check: BudgetCheck,
                 store: BudgetStore) -> None:
        self.backend = backend
        self.check = check
        self.store = store

    async def write(self, records: Sequence[CallRecord]) -> None:
        """What the ledger sink does with finished records (and, on a shared ledger, what
        it tells the budgets), then the fleet's once-a-second read."""
        await self.backend.write([r.to_row() for r in records])
        if isinstance(self.store, FleetBudgets):
            self.store.rows_written([r.call_id for r in records])
            await self.store.sync()

    async def sync(self) -> None:
        if isinstance(self.store, FleetBudgets):
            await self.store.sync()

    def reserved(self, name: str) -> Decimal:
        (w,) = [w for w in self.check.windows if w.cfg.name == name]
        return self.store.reserved_usd(w)


@asynccontextmanager
async def open_budgets(kind: str, target: str, configs: Sequence[BudgetConfig],
                       before: Sequence[CallRecord] = ()) -> AsyncIterator[BudgetLedger]:
    """`before`: rows in the ledger when the budgets open (their spend is restored)."""
    backend: LedgerBackend
    store: BudgetStore
    backend = open_backend(target)
    if backend.fleet is None:
        store = LocalBudgets(backend)
    else:
        store = FleetBudgets(backend.fleet)
    await backend.open()
    try:
        if before:
            await backend.write([r.to_row() for r in before])
        if backend.fleet is not None:
            assert isinstance(store, FleetBudgets)
            store.replica = REPLICA
            await backend.fleet.heartbeat(REPLICA, 0)  # its reservations count from now
        check = BudgetCheck(configs)
        await check.open(store)
        yield BudgetLedger(backend, check, store)
    finally:
        await backend.aclose()


def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """For a fixture with params ["sqlite", "postgresql"]: (kind, target), a SQLite file or
    a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "ledger.db")
    url: Any = request.getfixturevalue("pg_url")
    return "postgresql", str(url)
