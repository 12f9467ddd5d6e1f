"""Re-pricing stored calls with the current prices (after a genai-prices upgrade or a
config price change): the token columns and `priced_units` hold every billed unit, the
`service_tier` column the served tier, `batch_id` whether it was a batch line. Pure: rows
in, new (cost, list cost, source) out; `tokenbooth reprice` does the reading and writing.
Both costs follow the current prices and `pricing.adjustments`: a provider-reported cost
keeps its list cost (what the provider charged) and gets the current adjustment."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from proxy.config import Upstream
from proxy.dialects import price_provider, recorded_model
from proxy.pricing import PriceBook
from proxy.usage import Usage

__all__ = ["COLUMNS", "Repriced", "reprice", "usage_of_row"]

COLUMNS = ("call_id", "upstream", "request_model", "response_model", "model", "input_tokens",
           "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens",
           "priced_units", "service_tier", "batch_id", "cost_usd", "price_source", "usage_raw",
           "list_cost_usd")
# Costs that no price list changes: the provider's own charge, free calls.
_KEEP = ("provider", "free")


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(repr(value))


@dataclass(frozen=True, slots=True)
class Repriced:
    call_id: str
    model: str | None
    old_usd: Decimal | None  # charged
    new_usd: Decimal | None
    source: str | None
    old_list_usd: Decimal | None = None
    new_list_usd: Decimal | None = None


def usage_of_row(row: Mapping[str, Any]) -> Usage:
    units = json.loads(row["priced_units"]) if row["priced_units"] else {}
    write_1h = units.pop("cache_write_1h_tokens", None)
    raw = json.loads(row["usage_raw"]) if row["usage_raw"] else None
    speed = raw.get("speed") if isinstance(raw, dict) else None  # kept in the raw usage
    return Usage(row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"],
                 write_1h, row["output_tokens"], row["reasoning_tokens"], units or None,
                 row["service_tier"], row["batch_id"] is not None,
                 speed if isinstance(speed, str) else None)


def reprice(rows: Iterable[Mapping[str, Any]], prices: PriceBook,
            upstreams: Mapping[str, Upstream]) -> list[Repriced]:
    out = []
    for row in rows:
        old, old_list = _dec(row["cost_usd"]), _dec(row["list_cost_usd"])
        model = row["response_model"] or row["request_model"] or row["model"]
        if row["price_source"] == "provider" and old is not None:
            # the provider's own charge is its list cost; only the adjustment may change
            listed = old if old_list is None else old_list
            new = prices.adjuster.charged(listed, row["upstream"], model, row["model"])
            out.append(Repriced(row["call_id"], row["model"], old, new, "provider",
                                old_list, listed))
            continue
        if row["price_source"] in _KEEP or (row["input_tokens"] is None
                                             and row["output_tokens"] is None):
            continue
        up = upstreams.get(row["upstream"])
        if up is not None and up.free:
            continue
        pid = price_provider(up.dialect, up.name) if up is not None else None
        price = prices.price(model, pid, usage_of_row(row), upstream=row["upstream"])
        kept = recorded_model(up.dialect if up is not None else None, row["request_model"],
                              price.model or model)
        out.append(Repriced(row["call_id"], kept, old, price.cost_usd, price.source,
                            old_list, price.list_cost_usd))
    return out
