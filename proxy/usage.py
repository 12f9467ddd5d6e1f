"""Normalized token usage (SPEC section 4), and the one place provider usage is normalized.

`None` means "not reported"; `0` means zero. Input counts include cache reads and writes;
output counts include reasoning. Each `from_*` function takes the provider's raw usage
object and returns a Usage; a part/total disagreement is logged, never raised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["STANDARD_TIERS", "Usage", "from_anthropic", "from_bedrock", "from_gemini",
           "from_ollama", "from_openai"]

log = logging.getLogger("tokenbooth.usage")


# Served tiers priced at the standard rate: no price variant is asked for.
STANDARD_TIERS = frozenset({"default", "standard", "auto", "on_demand", "ON_DEMAND",
                            "standard_only"})


@dataclass(frozen=True, slots=True)
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

    def priced_units(self) -> dict[str, int]:
        """What the ledger's `priced_units` holds: every non-zero unit beyond the six."""
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


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _units(**counts: int | None) -> dict[str, int] | None:
    out = {k: v for k, v in counts.items() if v}
    return out or None


def _modalities(details: Any, count_key: str = "tokenCount") -> dict[str, int]:
    """Gemini `[{modality: AUDIO, tokenCount: n}, ...]` -> {"audio": n, ...}."""
    out: dict[str, int] = {}
    for d in details if isinstance(details, list) else ():
        if isinstance(d, dict) and isinstance(d.get("modality"), str):
            n = _int(d.get(count_key))
            if n:
                key = d["modality"].lower()
                out[key] = out.get(key, 0) + n
    return out


def _check(kind: str, parts: int, total: int | None) -> None:
    if total is not None and parts != total:
        log.warning("usage mismatch (%s): parts add up to %d, provider total %d",
                    kind, parts, total)


def from_openai(u: dict[str, Any], *, responses: bool = False, tier: Any = None,
                web_searches: int = 0) -> Usage:
    """OpenAI chat/completions/embeddings/Responses and the OpenAI-compatible family.

    Cached and cache-write tokens are subsets of the prompt count; reasoning is a subset
    of the completion count, except where the provider's total says otherwise (xAI chat
    reports reasoning outside completion_tokens: then output = total - prompt).
    """
    if responses:
        inp, out = _int(u.get("input_tokens")), _int(u.get("output_tokens"))
        in_details, out_details = u.get("input_tokens_details"), u.get("output_tokens_details")
    else:
        inp, out = _int(u.get("prompt_tokens")), _int(u.get("completion_tokens"))
        in_details = u.get("prompt_tokens_details")
        out_details = u.get("completion_tokens_details")
    cache_read = _int(_dig(in_details, "cached_tokens"))
    if cache_read is None:
        cache_read = _int(u.get("prompt_cache_hit_tokens"))  # DeepSeek
    cache_write = _int(_dig(in_details, "cache_write_tokens"))
    reasoning = _int(_dig(out_details, "reasoning_tokens"))
    total = _int(u.get("total_tokens"))
    if inp is not None and out is None and total is not None:
        out = total - inp if total >= inp else 0  # embeddings: no output side
    elif inp is not None and out is not None and total is not None and total > inp + out:
        # Output billed outside completion_tokens (xAI chat: reasoning). Provider total wins.
        out = total - inp
    elif inp is not None and out is not None:
        _check("openai", inp + out, total)
    audio_in = _int(_dig(in_details, "audio_tokens"))
    image_in = _int(_dig(in_details, "image_tokens"))
    audio_out = _int(_dig(out_details, "audio_tokens"))
    image_out = _int(_dig(out_details, "image_tokens"))
    cached_audio = _int(_dig(in_details, "cached_tokens_details", "audio_tokens"))
    return Usage(inp, cache_read if inp is not None else None,
                 cache_write if inp is not None else None, None, out, reasoning,
                 _units(input_audio_tokens=audio_in, input_image_tokens=image_in,
                        output_audio_tokens=audio_out, output_image_tokens=image_out,
                        cache_audio_read_tokens=cached_audio, web_searches=web_searches),
                 _str(tier) or _str(u.get("service_tier")))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _anthropic_one(u: dict[str, Any]) -> Usage:
    base = _int(u.get("input_tokens"))
    read = _int(u.get("cache_read_input_tokens"))
    write = _int(u.get("cache_creation_input_tokens"))
    write_1h = _int(_dig(u, "cache_creation", "ephemeral_1h_input_tokens"))
    if write is None and isinstance(u.get("cache_creation"), dict):
        write = sum(_int(v) or 0 for v in u["cache_creation"].values())
    inp = None if base is None else base + (read or 0) + (write or 0)
    tools = u.get("server_tool_use")
    return Usage(inp, read if inp is not None else None, write if inp is not None else None,
                 write_1h, _int(u.get("output_tokens")),
                 _int(_dig(u, "output_tokens_details", "thinking_tokens")),
                 _units(web_searches=_int(_dig(tools, "web_search_requests")),
                        web_fetches=_int(_dig(tools, "web_fetch_requests"))),
                 _str(u.get("service_tier")))


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
                     top.units, top.service_tier)
    return _anthropic_one(u)


def from_gemini(u: dict[str, Any]) -> Usage:
    """Gemini: thoughts sit outside candidates and tool-use prompt outside prompt."""
    prompt = _int(u.get("promptTokenCount"))
    tool = _int(u.get("toolUsePromptTokenCount")) or 0
    cached = _int(u.get("cachedContentTokenCount"))
    cand = _int(u.get("candidatesTokenCount"))
    thoughts = _int(u.get("thoughtsTokenCount"))
    inp = None if prompt is None else prompt + tool
    out = None
    if cand is not None or thoughts is not None or prompt is not None:
        out = (cand or 0) + (thoughts or 0)
    total = _int(u.get("totalTokenCount"))
    if inp is not None and out is not None:
        _check("gemini", inp + out, total)
    prompt_m = _modalities(u.get("promptTokensDetails"))
    tool_m = _modalities(u.get("toolUsePromptTokensDetails"))
    cache_m = _modalities(u.get("cacheTokensDetails"))
    out_m = _modalities(u.get("candidatesTokensDetails"))
    units: dict[str, int] = {}
    for modality in ("audio", "image", "video"):
        n = prompt_m.get(modality, 0) + tool_m.get(modality, 0)
        if n:
            units[f"input_{modality}_tokens"] = n
        if out_m.get(modality):
            units[f"output_{modality}_tokens"] = out_m[modality]
        if cache_m.get(modality):
            units[f"cache_{modality}_read_tokens"] = cache_m[modality]
    if tool:
        units["input_tool_tokens"] = tool
    return Usage(inp, (cached or 0) if inp is not None else None,
                 0 if inp is not None else None, None, out, thoughts, units or None,
                 _str(u.get("serviceTier")) or _str(u.get("trafficType")))


def from_bedrock(u: dict[str, Any]) -> Usage:
    """Bedrock Converse `usage`: inputTokens excludes cache reads and writes (totalTokens
    includes them); `cacheDetails` splits writes by TTL. Also the InvokeModel
    `amazon-bedrock-invocationMetrics` spelling (`inputTokenCount`, ...)."""
    base = _int(u.get("inputTokens"))
    if base is None:
        base = _int(u.get("inputTokenCount"))
    read = _int(u.get("cacheReadInputTokens"))
    if read is None:
        read = _int(u.get("cacheReadInputTokenCount"))
    write = _int(u.get("cacheWriteInputTokens"))
    if write is None:
        write = _int(u.get("cacheWriteInputTokenCount"))
    write_1h = None
    for d in u.get("cacheDetails") or ():
        n = _int(d.get("inputTokens")) if isinstance(d, dict) else None
        if n and d.get("ttl") in ("1h", "ONE_HOUR"):
            write_1h = (write_1h or 0) + n
    out = _int(u.get("outputTokens"))
    if out is None:
        out = _int(u.get("outputTokenCount"))
    inp = None if base is None else base + (read or 0) + (write or 0)
    if inp is not None and out is not None:
        _check("bedrock", inp + out, _int(u.get("totalTokens")))
    return Usage(inp, (read or 0) if inp is not None else None,
                 (write or 0) if inp is not None else None, write_1h, out, None)


def from_ollama(doc: dict[str, Any]) -> Usage:
    """Ollama native: prompt_eval_count is omitempty, so missing means unknown."""
    inp = _int(doc.get("prompt_eval_count"))
    out = _int(doc.get("eval_count"))
    return Usage(inp, None, None, None, out, None)
