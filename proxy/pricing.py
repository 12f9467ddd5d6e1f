"""Prices: genai-prices' bundled snapshot (never updated at run time) under config overrides.

`PriceBook.price()` answers (cost, source, model priced) for every billed unit of a call:
the six token classes, the units beyond them (modalities, 1h cache writes, web searches),
at the price variant of the tier that *served* the call, or of batch processing. Unknown
models, and billed units, tiers or batch processing that have no price, give cost None
(unpriced), never a smaller number. A provider-reported cost (OpenRouter `cost`, xAI
ticks) wins with source `provider`. Money is Decimal while computing.

Negotiated prices (`pricing.adjustments`): the price found above is the list price
(`list_cost_usd`); the first adjustment matching the call's upstream and model gives the
charged cost, list * (1 + percent/100), exact in Decimal (`cost_usd`). Unpriced stays None
in both, free stays 0 in both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from fnmatch import fnmatchcase
from importlib.metadata import version
from time import monotonic
from typing import Any

from proxy.config import ModelPrice, PriceAdjustment
from proxy.usage import STANDARD_TIERS, Usage
from proxy.value import value

__all__ = ["FREE_UNITS", "Adjuster", "Price", "PriceBook", "candidate_names", "price_context"]

MILLION = Decimal(1_000_000)
# Billed units that cost nothing beyond their tokens (Anthropic web fetch).
FREE_UNITS = frozenset({"web_fetches"})
_DATED = re.compile(r"^(.*?)-(?:\d{4}-\d{2}-\d{2}|\d{8})$")
_ZERO = Decimal(0)
_NO_CONTEXT: dict[str, str] = {}  # never written to
_MISS: Any = object()  # a cache's "not looked up yet"
# The per-million rates of the five plain token classes, in _fast_cost's order.
_CLASSES = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok",
            "output_mtok")
_Rates = tuple[Decimal | None, Decimal | None, Decimal | None, Decimal | None, Decimal | None]
_Entry = tuple[float, Any, _Rates | None, bool, bool]  # see PriceBook._prices
_Plain = tuple[float, _Rates, str]  # (expiry, plain rates, model priced): see PriceBook.price


@value
class Price:
    cost_usd: Decimal | None  # charged: the list cost under the matching adjustment
    source: str | None
    model: str | None  # the name that was priced
    list_cost_usd: Decimal | None = None  # the list price (set by PriceBook.price)


class Adjuster:
    """`pricing.adjustments`: the factor (1 + percent/100, exact) of the first adjustment
    whose globs match a call's upstream and model (either the model the call named or the
    name it was priced as); 1 when none matches."""

    def __init__(self, adjustments: Sequence[PriceAdjustment] = ()) -> None:
        self.adjustments = tuple(adjustments)
        self._factors = [Decimal(1) + Decimal(repr(float(a.percent))) / 100
                         for a in self.adjustments]
        self._cache: dict[tuple[str | None, str | None, str | None], Decimal | None] = {}

    def factor(self, upstream: str | None, model: str | None,
               priced: str | None = None) -> Decimal | None:
        """The matching adjustment's factor, or None (no adjustment matches)."""
        if not self.adjustments:
            return None
        key = (upstream, model, priced)
        if key in self._cache:
            return self._cache[key]
        found = None
        models = [m for m in (model, priced) if m]
        for adj, f in zip(self.adjustments, self._factors, strict=True):
            if adj.upstream is not None and (
                    upstream is None or not fnmatchcase(upstream, adj.upstream)):
                continue
            if adj.model is not None and not any(fnmatchcase(m, adj.model) for m in models):
                continue
            found = f
            break
        if len(self._cache) < 10_000:  # model names come from clients: bounded
            self._cache[key] = found
        return found

    def charged(self, list_cost: Decimal | None, upstream: str | None, model: str | None,
                priced: str | None = None) -> Decimal | None:
        """The charged cost of a list cost (None stays None, 0 stays 0)."""
        if not list_cost:  # None or 0
            return list_cost
        f = self.factor(upstream, model, priced)
        return list_cost if f is None else list_cost * f


def candidate_names(model: str) -> list[str]:
    """Spellings to try, most specific first: as given, without provider/`models/` prefixes,
    without a Vertex `@version`, and without a dated-snapshot suffix."""
    names = [model]
    m = model.removeprefix("models/")
    if "@" in m:
        m = m.split("@", 1)[0]
    if "/" in m:
        m = m.rsplit("/", 1)[1]
    for n in (m, _DATED.sub(r"\1", m)):
        if n and n not in names:
            names.append(n)
    return names


def price_context(usage: Usage) -> dict[str, str]:
    """The genai-prices price context of how the call was served (batch processing, the
    served tier, Anthropic's fast mode): {} for the standard price."""
    ctx = {}
    if usage.batch or usage.service_tier == "batch":
        ctx["processing"] = "batch"
    elif usage.service_tier is not None and usage.service_tier not in STANDARD_TIERS:
        ctx["service_tier"] = usage.service_tier
    if usage.speed is not None and usage.speed != "standard":
        ctx["speed"] = usage.speed
    return ctx


def _has_variant(info: Any, context: dict[str, str]) -> bool:
    """Every part of the context has a price variant of its own."""
    variants = [v.when for v in info.price_variants or () if v.when]
    return all(any(when.get(k) == v for when in variants) for k, v in context.items())


def _required(dims: Mapping[str, str]) -> dict[str, str]:
    """The dimensions a unit's price must match: a billed unit is never priced at the rate
    of a cheaper parent. Audio, image or video output, audio input and cache TTLs have
    rates of their own; image and video input are billed as input tokens where no rate
    of their own exists (Gemini, OpenAI); non-token units need their own price."""
    req = {k: v for k, v in dims.items() if k == "cache_ttl"}
    modality = dims.get("modality")
    if modality == "audio" or (modality in ("image", "video") and dims.get("direction")
                               == "output"):
        req["modality"] = modality
    if dims.get("family") != "tokens":
        req["family"] = dims.get("family", "")
    return req


def unpriced_units(mp: Any, units: Mapping[str, int]) -> list[str]:
    """The billed units (count > 0) that this model price cannot price."""
    from genai_prices.units import _get_registry

    registry = _get_registry()
    priced = [u for u in registry.units.values() if getattr(mp, u.price_key, None) is not None]
    missing = []
    for key, count in units.items():
        if not count or key in FREE_UNITS:
            continue
        unit = registry.units.get(key)
        if unit is None:
            missing.append(key)
            continue
        req = _required(unit.dimensions)
        if not any(p.dimensions.items() <= unit.dimensions.items()
                   and req.items() <= p.dimensions.items() for p in priced):
            missing.append(key)
    return missing


class PriceBook:
    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None,
                 adjustments: Sequence[PriceAdjustment] = ()) -> None:
        self._overrides = dict(overrides or {})
        self.adjuster = Adjuster(adjustments)
        self._cache: dict[tuple[str, str | None], Any] = {}
        self._mp_cache: dict[tuple[int, tuple[tuple[str, str], ...]], _Entry] = {}
        self._override_cache: dict[str, tuple[str, ModelPrice] | None] = {}
        self._plain: dict[tuple[str | None, str | None], _Plain] = {}  # see PriceBook.price
        self._known: frozenset[str] | None = None
        self.library_version = f"genai-prices {version('genai-prices')}"

    def warm(self) -> None:
        """Load the genai-prices snapshot now (~0.1 s), in a thread at start-up, so the first
        priced call does not do it on the event loop."""
        self.known_models()

    def known_models(self) -> frozenset[str]:
        """Every model name this book prices by: genai-prices' model ids (the name a priced
        call's record carries) and the `pricing.models` names. A bounded set."""
        if self._known is None:
            from genai_prices import data_snapshot

            snap = data_snapshot.get_snapshot()
            self._known = frozenset({m.id for p in snap.providers for m in p.models}
                                    | set(self._overrides))
        return self._known

    def _lookup(self, model: str, provider_id: str | None) -> Any:
        """The genai-prices (provider, model) pair for `model`, or None; cached."""
        key = (model, provider_id)
        if key in self._cache:
            return self._cache[key]
        from genai_prices import data_snapshot

        snap = data_snapshot.get_snapshot()
        found = None
        for name in candidate_names(model):
            for pid in (provider_id, None) if provider_id else (None,):
                try:
                    found = snap.find_provider_model(name, None, pid, None)
                    break
                except LookupError:
                    continue
            if found is not None:
                break
        if len(self._cache) < 10_000:  # model names come from clients: bounded
            self._cache[key] = found
        return found

    def _override(self, model: str) -> tuple[str, ModelPrice] | None:
        if model in self._override_cache:
            return self._override_cache[model]
        found = None
        for name in candidate_names(model):
            if name in self._overrides:
                found = name, self._overrides[name]
                break
        if len(self._override_cache) < 10_000:  # model names come from clients: bounded
            self._override_cache[model] = found
        return found

    def price(self, model: str | None, provider_id: str | None, usage: Usage, *,
              free: bool = False, provider_cost: Decimal | None = None,
              upstream: str | None = None) -> Price:
        """`provider_id` is the genai-prices provider (None: whichever knows the model).
        `upstream`: the route's name, which `pricing.adjustments` match."""
        # The usual call (twice a call): tokens only, standard price, a model with plain
        # rates and both an input and an output price, whose rates _list kept here with the
        # expiry of their ModelPrice. Anything else goes the whole way (same answer).
        hit = self._plain.get((model, provider_id))
        if hit is not None and provider_cost is None and not free and not usage.units \
                and not usage.batch and usage.speed is None \
                and (usage.input_tokens or usage.output_tokens) \
                and (usage.service_tier is None or usage.service_tier in STANDARD_TIERS) \
                and hit[0] > monotonic():
            cost = _plain_cost(hit[1], usage)
            if cost is not None:
                if self.adjuster.adjustments:
                    return Price(self.adjuster.charged(cost, upstream, model, hit[2]),
                                 self.library_version, hit[2], cost)
                return Price(cost, self.library_version, hit[2], cost)
        cost, source, priced = self._list(model, provider_id, usage, free, provider_cost)
        # Called twice per call: without adjustments the charged cost is the list cost.
        charged = cost if not self.adjuster.adjustments else \
            self.adjuster.charged(cost, upstream, model, priced)
        return Price(charged, source, priced, cost)

    def _list(self, model: str | None, provider_id: str | None, usage: Usage, free: bool,
              provider_cost: Decimal | None) -> tuple[Decimal | None, str | None, str | None]:
        """(list cost, source, model priced): a tuple, so that `price` builds one Price."""
        if provider_cost is not None:
            return provider_cost, "provider", model
        if free:
            return Decimal(0), "free", model
        if usage.input_tokens is None and usage.output_tokens is None:
            return None, None, model
        if not usage.input_tokens and not usage.output_tokens and not usage.units:
            return Decimal(0), "free", model  # nothing billed (a failed batch line)
        if not model:
            return None, None, model
        units = usage.priced_units() if usage.units else None
        tier = usage.service_tier
        # The usual call is served at the standard price: no context to build.
        context = price_context(usage) if usage.batch or usage.speed is not None or (
            tier is not None and tier not in STANDARD_TIERS) else _NO_CONTEXT
        # The two caches' hits inline, without a method call each (this runs twice a call).
        over = self._override_cache.get(model, _MISS)
        if over is _MISS:
            over = self._override(model)
        if over is not None:
            # Config prices plain tokens: a tier, batch or non-token unit has no price there.
            if context or any(not k.endswith("_tokens") and k not in FREE_UNITS
                              for k in units or ()):
                return None, None, over[0]
            return _config_cost(over[1], usage), "config", over[0]
        found = self._cache.get((model, provider_id), _MISS)
        if found is _MISS:
            found = self._lookup(model, provider_id)
        if found is None:
            return None, None, model
        provider, info = found
        if context and not _has_variant(info, context):
            return None, None, info.id  # served at a tier with no known price
        expiry, mp, rates, no_input, no_output = self._prices(info, context)
        if rates is not None and not context and not no_input and not no_output \
                and len(self._plain) < 10_000:  # model names come from clients: bounded
            self._plain[model, provider_id] = (expiry, rates, info.id)
        if units and _speech_only(info.id, mp, usage):
            # A text-to-speech model outputs nothing but audio: its output rate is its
            # audio output rate (Gemini TTS reports AUDIO candidates; genai-prices lists
            # the rate as plain output).
            units = {k: v for k, v in units.items() if k != "output_audio_tokens"}
            usage = Usage(usage.input_tokens, usage.cache_read_tokens,
                          usage.cache_write_tokens, usage.cache_write_1h_tokens,
                          usage.output_tokens, usage.reasoning_tokens, units or None,
                          usage.service_tier, usage.batch, usage.speed)
        if (usage.input_tokens and no_input) or (usage.output_tokens and no_output):
            # Tokens of a model billed by something else (whisper-1: audio seconds): no
            # price for them, never $0.
            return None, None, info.id
        if units:
            if unpriced_units(mp, units):
                return None, None, info.id
            cost = None
        elif rates is not None:
            cost = _plain_cost(rates, usage)
        else:
            cost = _fast_cost(mp, usage)
        if cost is None:
            cost = _library_cost(provider, info, usage, context)
        return cost, self.library_version, info.id

    def _prices(self, info: Any, context: dict[str, str] | None) -> _Entry:
        """(expiry, the model's current ModelPrice at the tier or batch variant, its plain
        rates or None, whether it has no input price, whether it has no output price),
        cached for an hour (prices change by date). One entry per model and price variant
        of the bundled snapshot: bounded."""
        key = (id(info), tuple(sorted(context.items())) if context else ())
        hit = self._mp_cache.get(key)
        now = monotonic()
        if hit is not None and hit[0] > now:
            return hit
        mp = info.get_prices(datetime.now(UTC), context or None)
        entry = (now + 3600, mp, _plain_rates(mp), getattr(mp, "input_mtok", None) is None,
                 getattr(mp, "output_mtok", None) is None)
        self._mp_cache[key] = entry
        return entry

    def describe(self, model: str, provider_id: str | None = None) -> dict[str, Any]:
        """For `tokenbooth prices`: readable prices (USD; tiers spelled out), the served-tier
        and batch variants, and where they come from."""
        over = self._override(model)
        if over is not None:
            return {"model": over[0], "source": "config",
                    "prices": {f"{k} per million tokens": f"${v}"
                               for k, v in vars(over[1]).items() if v is not None}}
        found = self._lookup(model, provider_id)
        if found is None:
            return {"model": model, "source": None, "prices": None}
        provider, info = found
        now = datetime.now(tz=UTC)
        out: dict[str, Any] = {"model": info.id, "provider": provider.id,
                               "source": self.library_version,
                               "prices": _readable(info.get_prices(now))}
        variants = {}
        for variant in info.price_variants or ():
            ctx = dict(variant.when)
            if not ctx or ctx.get("service_tier") in STANDARD_TIERS:
                continue
            label = ", ".join(f"{k} {v}" for k, v in ctx.items())
            variants[label] = _readable(info.get_prices(now, ctx))
        if variants:
            out["variants"] = variants
        return out


_TTS = re.compile(r"(?:^|-)tts(?:-|$)")


def _speech_only(model_id: str, mp: Any, usage: Usage) -> bool:
    """Every output token is audio, of a TTS model priced without an audio output rate."""
    audio = (usage.units or {}).get("output_audio_tokens")
    return bool(audio) and audio == usage.output_tokens and _TTS.search(model_id) is not None \
        and getattr(mp, "output_audio_mtok", None) is None


def _readable(mp: Any) -> dict[str, str]:
    """{"input": "$3 per million tokens; above 200,000 input tokens: $6", ...}"""
    from genai_prices.units import _get_registry

    registry = _get_registry()
    out = {}
    for unit in registry.units.values():
        price = getattr(mp, unit.price_key, None)
        if price is None:
            continue
        per = "million tokens" if unit.per == 1_000_000 else \
            f"{unit.per:,} {unit.usage_key.replace('_', ' ')}"
        name = unit.usage_key.removesuffix("_tokens").replace("_", " ")
        if isinstance(price, Decimal):
            out[name] = f"${price:f} per {per}"
        else:
            tiers = "; ".join(f"above {t.start:,} input tokens: ${Decimal(t.price):f}"
                              for t in price.tiers)
            out[name] = f"${Decimal(price.base):f} per {per}; {tiers}"
    return out


def _config_cost(p: ModelPrice, u: Usage) -> Decimal:
    inp, out = u.input_tokens or 0, u.output_tokens or 0
    read, write = u.cache_read_tokens or 0, u.cache_write_tokens or 0
    price_in = Decimal(repr(p.input))
    read_price = Decimal(repr(p.cache_read)) if p.cache_read is not None else price_in
    write_price = Decimal(repr(p.cache_write)) if p.cache_write is not None else price_in
    total = (Decimal(max(inp - read - write, 0)) * price_in + Decimal(read) * read_price
             + Decimal(write) * write_price + Decimal(out) * Decimal(repr(p.output)))
    return total / MILLION


def _tier(price: Any, total_input: int) -> Decimal | None:
    """genai-prices' cliff rule: the highest tier whose start the total input exceeds."""
    if isinstance(price, Decimal):
        return price
    if price is None or not hasattr(price, "tiers"):
        return None
    for tier in reversed(price.tiers):
        if total_input > tier.start:
            return Decimal(tier.price)
    return Decimal(price.base)


def _plain_rates(mp: Any) -> _Rates | None:
    """The five classes' rates (None: no price) of a ModelPrice without tiers, resolved once
    per cached ModelPrice; None when any class is tiered (_fast_cost resolves those by the
    call's input)."""
    rates = tuple(getattr(mp, key, None) for key in _CLASSES)
    if any(r is not None and not isinstance(r, Decimal) for r in rates):
        return None
    return rates  # type: ignore[return-value]  # five, by _CLASSES


def _plain_cost(rates: _Rates, u: Usage) -> Decimal | None:
    """The cost at resolved rates (one per class, None: no price): genai-prices' arithmetic
    for plain token classes, in its order, so the same Decimal; None when a class with
    tokens has no price (the library then decides)."""
    inp, out = u.input_tokens or 0, u.output_tokens or 0
    read, write = u.cache_read_tokens or 0, u.cache_write_tokens or 0
    write_1h = u.cache_write_1h_tokens or 0
    write_5m = write - write_1h
    uncached = inp - read - write
    if uncached < 0 or write_5m < 0:
        return None
    rate_in, rate_read, rate_write, rate_1h, rate_out = rates
    total = _ZERO
    # The five classes in the library's order, unrolled (this runs twice a call). A class
    # with no tokens adds nothing, not even a zero: the Decimal's exponent, so its digits,
    # stay those of the library's sum.
    if uncached:
        if rate_in is None:
            return None
        total += rate_in * uncached
    if read:
        if rate_read is None:
            return None
        total += rate_read * read
    if write_5m:
        if rate_write is None:
            return None
        total += rate_write * write_5m
    if write_1h:
        if rate_1h is None:
            return None
        total += rate_1h * write_1h
    if out:
        if rate_out is None:
            return None
        total += rate_out * out
    return total / MILLION


def _fast_cost(mp: Any, u: Usage) -> Decimal | None:
    """The same arithmetic as genai-prices for plain token classes, ~50x cheaper; tiered
    rates are resolved by the call's input first (genai-prices' cliff rule).

    Returns None (use the library) whenever a class with tokens has no price of its own,
    so every fallback rule stays the library's. A property test checks equality.
    """
    inp = u.input_tokens or 0
    rates = tuple(_tier(getattr(mp, key, None), inp) for key in _CLASSES)
    return _plain_cost(rates, u)  # type: ignore[arg-type]  # five, by _CLASSES


def _library_cost(provider: Any, info: Any, u: Usage,
                  context: dict[str, str] | None = None) -> Decimal:
    from genai_prices import Usage as LibUsage

    kwargs: dict[str, int] = {k: v for k, v in (u.units or {}).items() if k not in FREE_UNITS}
    if u.input_tokens is not None:
        kwargs["input_tokens"] = u.input_tokens
    if u.output_tokens is not None:
        kwargs["output_tokens"] = u.output_tokens
    if u.cache_read_tokens:
        kwargs["cache_read_tokens"] = u.cache_read_tokens
    if u.cache_write_tokens:
        kwargs["cache_write_tokens"] = u.cache_write_tokens
        if u.cache_write_1h_tokens:
            kwargs["cache_write_1h_tokens"] = u.cache_write_1h_tokens
            kwargs["cache_write_5m_tokens"] = u.cache_write_tokens - u.cache_write_1h_tokens
    calc = info.calc_price(LibUsage(**kwargs), provider, genai_request_timestamp=datetime.now(UTC),
                           auto_update_timestamp=None, price_context=context or None)
    return Decimal(calc.total_price)
