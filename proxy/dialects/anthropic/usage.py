"""Anthropic usage (also Bedrock InvokeModel and Vertex rawPredict bodies) into billed
units."""

from __future__ import annotations

from typing import Any

from proxy.usage import Usage, as_int, as_str, dig, units

__all__ = ["from_anthropic"]


def _anthropic_one(u: dict[str, Any]) -> Usage:
    base = as_int(u.get("input_tokens"))
    read = as_int(u.get("cache_read_input_tokens"))
    write = as_int(u.get("cache_creation_input_tokens"))
    write_1h = as_int(dig(u, "cache_creation", "ephemeral_1h_input_tokens"))
    if write is None and isinstance(u.get("cache_creation"), dict):
        write = sum(as_int(v) or 0 for v in u["cache_creation"].values())
    inp = None if base is None else base + (read or 0) + (write or 0)
    tools = u.get("server_tool_use")
    return Usage(inp, read if inp is not None else None, write if inp is not None else None,
                 write_1h, as_int(u.get("output_tokens")),
                 as_int(dig(u, "output_tokens_details", "thinking_tokens")),
                 units(web_searches=as_int(dig(tools, "web_search_requests")),
                        web_fetches=as_int(dig(tools, "web_fetch_requests"))),
                 as_str(u.get("service_tier")), speed=as_str(u.get("speed")))


def from_anthropic(u: dict[str, Any]) -> Usage:
    """Anthropic Messages: input_tokens excludes cache reads and writes; add them back.

    The beta `iterations` array (compaction, advisor loops) holds what is billed when
    present: the top-level numbers exclude those iterations, so sum the entries.
    """
    iterations = u.get("iterations")
    if isinstance(iterations, list) and iterations and all(isinstance(i, dict) for i in iterations):
        parts = [_anthropic_one(i) for i in iterations]
        def add(name: str) -> int | None:
            vals = [getattr(p, name) for p in parts if getattr(p, name) is not None]
            return sum(vals) if vals else None
        top = _anthropic_one(u)
        return Usage(add("input_tokens"), add("cache_read_tokens"), add("cache_write_tokens"),
                     add("cache_write_1h_tokens"), add("output_tokens"), add("reasoning_tokens"),
                     top.units, top.service_tier, speed=top.speed)
    return _anthropic_one(u)
