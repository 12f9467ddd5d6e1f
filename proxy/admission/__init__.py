"""Admission, before forwarding: may this call go upstream? (Client authentication is
`proxy/auth.py`'s, a step before.) One decision from a list of checks, asked in order;
each admits (holding what the call may use) or refuses with a reason and a retry hint,
and the first refusal is the answer. The checks are the rate limits'
(`proxy/admission/rates.py`) then the budgets' (`proxy/admission/budgets.py`), their
stores injected once the ledger is open. On a shared PostgreSQL ledger the rate limits'
reservation is not made on its own: it joins the budgets' round trip (one SQL call
decides both), or, when no budget check runs, is made alone at the end: one round trip
per call either way.

Not a sink: it answers from the request alone. The record of every call, refused or not,
settles what was held (`BudgetCheck.settle` and `RateCheck.settle`, called by the budgets
sink)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from functools import partial
from typing import Any

from proxy.admission.base import Ask, Check, Denied, context
from proxy.dialects import DIALECTS
from proxy.estimate import Estimator
from proxy.pricing import PriceBook
from proxy.record import CallFacts
from proxy.routing import Route
from proxy.usage import Usage

__all__ = ["Admission", "Ask", "Check", "Denied"]

_THREAD_BYTES = 64 * 1024  # a larger request is estimated in a worker thread
_ZERO = Decimal(0)


class Admission:
    def __init__(self, checks: Sequence[Check], prices: PriceBook,
                 estimator: Estimator) -> None:
        self._checks = tuple(checks)
        # checks that read the consumer key a call presents (its own limits): asked for
        # such a call even while they can refuse nothing else
        self._per_key = tuple(c for c in self._checks if getattr(c, "per_key", False))
        self._prices = prices
        self._estimator = estimator

    @property
    def active(self) -> bool:
        """Nothing to decide for a call without a check that can refuse it."""
        for c in self._checks:  # a loop, not any(<generator>): asked for every call
            if c.active:
                return True
        return False

    def needed(self, facts: CallFacts) -> bool:
        """Is there anything to decide for this call: a check that can refuse any call, or
        one that reads the consumer key the call presented (its own limits)?"""
        return self.active or (facts.key is not None and bool(self._per_key))

    async def admit(self, facts: CallFacts, route: Route) -> Denied | None:
        """None to admit, or the refusal. Reads the request as the handler parsed it
        (`facts.request_doc`, `request_info`)."""
        return (await self.decide(facts, route))[0]

    async def decide(self, facts: CallFacts, route: Route) -> tuple[Denied | None, Any]:
        """(None or the refusal, the rate limits' figures for the response's headers, or
        None when no rate limit applies)."""
        info = facts.request_info
        model = (info.model if info else None) or route.path_model
        key = facts.key
        # a partial, not a closure: no cells, no frame of its own when awaited
        ask = Ask(facts.call_id, context(facts.tags, facts.upstream, model, facts.client,
                                          key.id if key else None),
                  partial(self._worst, facts, route, model), key)
        for check in self._checks:
            if not (check.active or (key is not None and check in self._per_key)):
                continue
            denied = await check.check(ask)
            if denied is not None:
                return denied, None
        if ask.rates is not None:  # a fleet's rate reservation no budget took along
            denied = await ask.rates.alone()
            if denied is not None:
                return denied, None
        return None, ask.view

    async def _worst(self, facts: CallFacts, route: Route, model: str | None
                     ) -> tuple[int, Decimal]:
        """The most the call can use: its estimated input tokens plus max_tokens (the input
        alone without one), and their cost with all of max_tokens out."""
        dialect = DIALECTS.get(route.parser) if route.parser else None
        doc, info = facts.request_doc, facts.request_info
        if dialect is None or doc is None:
            return 0, _ZERO
        if len(facts.request_body) > _THREAD_BYTES:
            est = await asyncio.to_thread(self._estimator.input, dialect, doc, model)
        else:
            est = self._estimator.input(dialect, doc, model)
        out = info.max_tokens if info and info.max_tokens else 0
        price = self._prices.price(model, route.price_provider,
                                   Usage(est.tokens, 0, 0, None, out, None),
                                   free=route.upstream.free, upstream=facts.upstream)
        return est.tokens + out, price.cost_usd or _ZERO
