"""Admission, before forwarding: may this call go upstream? (Client authentication is the
Forwarder's.) One decision from a list of checks, asked in order; each admits (holding what
the call may use) or refuses with a reason and a retry hint, and the first refusal is the
answer. Today the one check is the budgets' (`proxy/admission/budgets.py`, its store
injected once the ledger is open); a per-key rate limit would be one more `Check` in the
list, and on PostgreSQL would join the budgets' reservation round trip through its store.

Not a sink: it answers from the request alone. The record of every call, refused or not,
settles what was held (`BudgetCheck.settle`, called by the budgets sink)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal

from proxy.admission.base import Ask, Check, Denied, context
from proxy.dialects import DIALECTS
from proxy.estimate import Estimator
from proxy.pricing import PriceBook
from proxy.record import CallFacts
from proxy.routing import Route
from proxy.usage import Usage

__all__ = ["Admission", "Ask", "Check", "Denied"]

_THREAD_BYTES = 64 * 1024  # a larger request is estimated in a worker thread


class Admission:
    def __init__(self, checks: Sequence[Check], prices: PriceBook,
                 estimator: Estimator) -> None:
        self._checks = tuple(c for c in checks if c.active)
        self._prices = prices
        self._estimator = estimator
        self.active = bool(self._checks)  # nothing to decide without a check that can refuse

    async def admit(self, facts: CallFacts, route: Route) -> Denied | None:
        """None to admit, or the refusal. Reads the request as the handler parsed it
        (`facts.request_doc`, `request_info`)."""
        info = facts.request_info
        model = (info.model if info else None) or route.path_model

        async def worst() -> Decimal:
            return await self._worst(facts, route, model)

        ask = Ask(facts.call_id, context(facts.tags, facts.upstream, model, facts.client,
                                          facts.key.id if facts.key else None),
                  worst)
        for check in self._checks:
            denied = await check.check(ask)
            if denied is not None:
                return denied
        return None

    async def _worst(self, facts: CallFacts, route: Route, model: str | None) -> Decimal:
        """The most the call can cost: its estimated input and all of max_tokens out."""
        dialect = DIALECTS.get(route.parser) if route.parser else None
        doc, info = facts.request_doc, facts.request_info
        if dialect is None or doc is None:
            return Decimal(0)
        if len(facts.request_body) > _THREAD_BYTES:
            est = await asyncio.to_thread(self._estimator.input, dialect, doc, model)
        else:
            est = self._estimator.input(dialect, doc, model)
        out = info.max_tokens if info and info.max_tokens else 0
        price = self._prices.price(model, route.price_provider,
                                   Usage(est.tokens, 0, 0, None, out, None),
                                   free=route.upstream.free, upstream=facts.upstream)
        return price.cost_usd or Decimal(0)
