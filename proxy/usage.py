"""Normalized usage: every billed unit of one call, and the helpers each provider home uses
to normalize its own usage (`proxy/dialects/<provider>/usage.py`).

`None` means "not reported"; `0` means zero. Input counts include cache reads and writes;
output counts include reasoning. Each `from_*` function takes the provider's raw usage
object and returns a Usage; a part/total disagreement is logged, never raised.
"""

from __future__ import annotations

import logging
from typing import Any

from proxy.value import value

__all__ = ["STANDARD_TIERS", "Usage", "as_int", "as_str", "check_total", "dig", "units"]

log = logging.getLogger("tokenbooth.usage")


# Served tiers priced at the standard rate: no price variant is asked for.
STANDARD_TIERS = frozenset({"default", "standard", "auto", "on_demand", "ON_DEMAND",
                            "standard_only"})


@value
class Usage:
    """Every billed unit of one call. The six token columns, then `units`: the billed units
    beyond them, named as genai-prices names them (`input_audio_tokens`, `web_searches`,
    ...; each a part of its token column, except non-token units), the tier that *served*
    the call, and whether it was a batch call."""

    input_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None  # part of cache_write_tokens priced at the 1h rate
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    units: dict[str, int] | None = None
    service_tier: str | None = None
    batch: bool = False
    speed: str | None = None  # Anthropic `usage.speed` (`fast` mode is priced at a premium)

    def with_cache_known(self) -> Usage:
        """The same usage with unreported cache classes as 0 (input was reported whole).
        Built directly: `dataclasses.replace` costs several times more per call."""
        return Usage(self.input_tokens, self.cache_read_tokens or 0,
                     self.cache_write_tokens or 0, self.cache_write_1h_tokens,
                     self.output_tokens, self.reasoning_tokens, self.units, self.service_tier,
                     self.batch, self.speed)

    def priced_units(self) -> dict[str, int]:
        """What the ledger's `priced_units` holds: every non-zero unit beyond the six."""
        if not self.units and not self.cache_write_1h_tokens:
            return {}
        out = {k: v for k, v in (self.units or {}).items() if v}
        if self.cache_write_1h_tokens:
            out["cache_write_1h_tokens"] = self.cache_write_1h_tokens
        return out

    @property
    def total_tokens(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    @property
    def has_input(self) -> bool:
        return self.input_tokens is not None

    @property
    def has_output(self) -> bool:
        return self.output_tokens is not None


def as_int(value: object) -> int | None:
    if type(value) is int:  # the usual count: no isinstance checks, no int() copy
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def units(**counts: int | None) -> dict[str, int] | None:
    out = {k: v for k, v in counts.items() if v}
    return out or None


def check_total(kind: str, parts: int, total: int | None) -> None:
    if total is not None and parts != total:
        log.warning("usage mismatch (%s): parts add up to %d, provider total %d",
                    kind, parts, total)


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
