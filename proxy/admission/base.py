"""What admission is made of: a call as the checks see it (`Ask`), a check (`Check`), and a
refusal (`Denied`: which check, the reason, and when a retry may succeed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any, Protocol

from proxy.value import value

__all__ = ["Ask", "Check", "Denied", "context", "matches"]


@value
class Denied:
    """One check's refusal: the call is not sent. `name` is what refused (a budget's or a
    rate limit's name), `retry_after_seconds` when a retry may succeed (None: not in this
    window)."""

    name: str
    limit_usd: float
    retry_after_seconds: int | None = None  # until the window ends; None for `total`
    ledger_down: bool = False  # `on_ledger_down: refuse` and the shared ledger is away
    check: str = "budget"  # the kind of check that refused: "budget" or "rate"
    # A rate limit's refusal: its own message, the exact wait in milliseconds, and the
    # figures its headers are made of (`proxy.admission.rate_headers.RateView`)
    detail: str | None = None
    retry_after_ms: int | None = None
    view: Any = None
    never: bool = False  # a rate limit that can never admit the call as it is (no retry)

    @property
    def message(self) -> str:
        if self.detail is not None:
            return self.detail
        if self.ledger_down:
            return (f"Tokenbooth budget '{self.name}' cannot be checked: the shared ledger "
                    f"is unreachable and the budget refuses calls until it answers "
                    f"(on_ledger_down: refuse); the request was not sent.")
        return (f"Tokenbooth budget '{self.name}' (limit ${self.limit_usd:g}) is exhausted "
                f"for this window; the request was not sent.")


class Ask:
    """One call as the checks see it: `context` (what a budget's `match` is compared with:
    the call's tags, `upstream`, `model`, `client`, `key`), the consumer key it presented
    (`key`, for its own limits), and the most it can use: its tokens (the input estimate
    plus `max_tokens`) and their cost, estimated once, on first use only (a call no check
    concerns is never estimated). `worst` answers the cost alone, or (tokens, cost).

    `rates`: a fleet's rate-limit reservation not made yet (`proxy.admission.rate_fleet`): the
    budgets' round trip takes it along, or admission makes it alone at the end. `view`: the
    rate limits' figures for the response's headers, once admitted."""

    __slots__ = ("_cost", "_tokens", "_worst", "call_id", "context", "key", "rates", "view")

    def __init__(self, call_id: str, context: Mapping[str, str | None],
                 worst: Callable[[], Awaitable[Decimal | tuple[int, Decimal]]],
                 key: Any = None) -> None:
        self.call_id = call_id
        self.context = context
        self.key = key
        self._worst = worst
        self._cost: Decimal | None = None
        self._tokens = 0
        self.rates: Any = None
        self.view: Any = None

    async def _estimate(self) -> None:
        got = await self._worst()
        if isinstance(got, tuple):
            self._tokens, self._cost = got
        else:
            self._cost = got

    async def worst_usd(self) -> Decimal:
        """Its estimated input and all of max_tokens out, priced (0 when unpriced)."""
        if self._cost is None:
            await self._estimate()
            assert self._cost is not None
        return self._cost

    async def tokens(self) -> int:
        """Its estimated input tokens plus `max_tokens` (the input alone without one)."""
        if self._cost is None:
            await self._estimate()
        return self._tokens


def context(tags: Mapping[str, str], upstream: str, model: str | None,
            client: str | None, key: str | None = None) -> dict[str, str | None]:
    """What a check's match is compared with, for a call or its record (`key`: the
    consumer key's id, when the call presented one)."""
    return {**tags, "upstream": upstream, "model": model, "client": client, "key": key}


def matches(limit: Any, ctx: Mapping[str, str | None]) -> bool:
    """Whether a budget's or a rate limit's `match` (its `.match`: field to value) holds
    for a `context`."""
    for k, v in limit.match.items():  # a loop, not all(<generator>): asked a few times a call
        if ctx.get(k) != v:
            return False
    return True


class Check(Protocol):
    """One of admission's questions. `check` admits (holding what the call may use until its
    record settles it) or refuses; a refused call's record settles what earlier checks held
    (its ledger row on PostgreSQL, the budgets sink here), so a check never undoes another's."""

    name: str
    active: bool  # False: it can refuse nothing (admission skips it)
    # A check may also say `per_key = True`: asked for every call that presents a consumer
    # key, even while `active` is False (the key's own limits).

    async def check(self, ask: Ask) -> Denied | None: ...
