"""Normalized token usage (SPEC section 4), and the one place provider usage is normalized.

`None` means "not reported"; `0` means zero. Input counts include cache reads and writes;
output counts include reasoning. Each `from_*` function takes the provider's raw usage
object and returns a Usage; a part/total disagreement is logged, never raised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["Usage", "from_anthropic", "from_gemini", "from_ollama", "from_openai"]

log = logging.getLogger("tokenbooth.usage")


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None  # part of cache_write_tokens priced at the 1h rate
    output_tokens: int | None = None
    reasoning_tokens: int | None = None

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


def _check(kind: str, parts: int, total: int | None) -> None:
    if total is not None and parts != total:
        log.warning("usage mismatch (%s): parts add up to %d, provider total %d",
                    kind, parts, total)


def from_openai(u: dict[str, Any], *, responses: bool = False) -> Usage:
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
    return Usage(inp, cache_read if inp is not None else None,
                 cache_write if inp is not None else None, None, out, reasoning)


def _anthropic_one(u: dict[str, Any]) -> Usage:
    base = _int(u.get("input_tokens"))
    read = _int(u.get("cache_read_input_tokens"))
    write = _int(u.get("cache_creation_input_tokens"))
    write_1h = _int(_dig(u, "cache_creation", "ephemeral_1h_input_tokens"))
    if write is None and isinstance(u.get("cache_creation"), dict):
        write = sum(_int(v) or 0 for v in u["cache_creation"].values())
    inp = None if base is None else base + (read or 0) + (write or 0)
    return Usage(inp, read if inp is not None else None, write if inp is not None else None,
                 write_1h, _int(u.get("output_tokens")),
                 _int(_dig(u, "output_tokens_details", "thinking_tokens")))


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
        return Usage(add("input_tokens"), add("cache_read_tokens"), add("cache_write_tokens"),
                     add("cache_write_1h_tokens"), add("output_tokens"), add("reasoning_tokens"))
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
    return Usage(inp, (cached or 0) if inp is not None else None,
                 0 if inp is not None else None, None, out, thoughts)


def from_ollama(doc: dict[str, Any]) -> Usage:
    """Ollama native: prompt_eval_count is omitempty, so missing means unknown."""
    inp = _int(doc.get("prompt_eval_count"))
    out = _int(doc.get("eval_count"))
    return Usage(inp, None, None, None, out, None)
