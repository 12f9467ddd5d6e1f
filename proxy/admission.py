"""Admission, before forwarding: may this call go upstream? (Client authentication is the
Forwarder's; this is the budgets' word.) Not a sink: it answers from the request alone and
reserves the call's worst case in every blocking budget that matches; the budgets sink
settles the reservation when the call's record arrives."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from proxy.dialects import DIALECTS
from proxy.estimate import Estimator
from proxy.pricing import PriceBook
from proxy.record import CallFacts
from proxy.routing import Route
from proxy.sinks.budgets import Budgets, Denied
from proxy.usage import Usage

__all__ = ["Admission"]

_THREAD_BYTES = 64 * 1024  # a larger request is estimated in a worker thread


class Admission:
    def __init__(self, budgets: Budgets, prices: PriceBook, estimator: Estimator) -> None:
        self._budgets = budgets
        self._prices = prices
        self._estimator = estimator
        self.active = budgets.blocking  # nothing to decide without a blocking budget

    async def admit(self, facts: CallFacts, route: Route) -> Denied | None:
        """None to admit (with a reservation), or the budget that refuses. Reads the
        request as the handler parsed it (`facts.request_doc`, `request_info`)."""
        info = facts.request_info
        model = (info.model if info else None) or route.path_model
        states = self._budgets.matching_blockers(
            self._budgets.context(facts.tags, facts.upstream, model, facts.client))
        if not states:
            return None
        worst = await self._worst(facts, route, model)
        return await self._budgets.reserve(states, facts.call_id, worst)

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
                                   free=route.upstream.free)
        return price.cost_usd or Decimal(0)
