"""Helpers shared by the OpenAI-compatible family (kept small)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from proxy.dialects.base import RequestInfo

__all__ = ["openai_request_info", "provider_cost"]


def openai_request_info(doc: Any) -> RequestInfo:
    if not isinstance(doc, dict):
        return RequestInfo()
    model = doc.get("model")
    max_tokens = doc.get("max_completion_tokens") or doc.get("max_tokens") \
        or doc.get("max_output_tokens")
    user = doc.get("user") or doc.get("safety_identifier")
    tier = doc.get("service_tier")
    return RequestInfo(model if isinstance(model, str) else None, doc.get("stream") is True,
                       user if isinstance(user, str) else None,
                       max_tokens if isinstance(max_tokens, int) else None,
                       tier if isinstance(tier, str) else None)


def provider_cost(usage: Any) -> Decimal | None:
    """The provider's own charge: OpenRouter `cost` (USD), xAI `cost_in_usd_ticks` (1e-10 USD)."""
    if not isinstance(usage, dict):
        return None
    cost = usage.get("cost")
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        return Decimal(repr(cost))
    ticks = usage.get("cost_in_usd_ticks")
    if isinstance(ticks, int) and not isinstance(ticks, bool):
        return Decimal(ticks) / Decimal(10**10)
    return None
