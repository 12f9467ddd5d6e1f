"""OpenAI usage (chat, completions, embeddings, Responses, and the compatible family)
into billed units."""

from __future__ import annotations

from typing import Any

from proxy.usage import Usage, as_int, as_str, check_total, dig, units

__all__ = ["from_openai"]

_NOTHING: dict[str, Any] = {}  # details not reported (never written to)


def _any_detail(details: dict[str, Any]) -> bool:
    return bool(details.get("audio_tokens") or details.get("image_tokens")
                or details.get("cached_tokens_details"))


def from_openai(u: dict[str, Any], *, responses: bool = False, tier: Any = None,
                web_searches: int = 0) -> Usage:
    """OpenAI chat/completions/embeddings/Responses and the OpenAI-compatible family.

    Cached and cache-write tokens are subsets of the prompt count; reasoning is a subset
    of the completion count, except where the provider's total says otherwise (xAI chat
    reports reasoning outside completion_tokens: then output = total - prompt).
    """
    if responses:
        inp, out = as_int(u.get("input_tokens")), as_int(u.get("output_tokens"))
        in_details, out_details = u.get("input_tokens_details"), u.get("output_tokens_details")
    else:
        inp, out = as_int(u.get("prompt_tokens")), as_int(u.get("completion_tokens"))
        in_details = u.get("prompt_tokens_details")
        out_details = u.get("completion_tokens_details")
    # The details as mappings once (dig's rule: anything else holds nothing).
    ind = in_details if isinstance(in_details, dict) else _NOTHING
    outd = out_details if isinstance(out_details, dict) else _NOTHING
    cache_read = as_int(ind.get("cached_tokens"))
    if cache_read is None:
        cache_read = as_int(u.get("prompt_cache_hit_tokens"))  # DeepSeek
    cache_write = as_int(ind.get("cache_write_tokens"))
    reasoning = as_int(outd.get("reasoning_tokens"))
    total = as_int(u.get("total_tokens"))
    if inp is not None and out is None and total is not None:
        out = total - inp if total >= inp else 0  # embeddings: no output side
    elif inp is not None and out is not None and total is not None and total > inp + out:
        # Output billed outside completion_tokens (xAI chat: reasoning). Provider total wins.
        out = total - inp
    elif inp is not None and out is not None:
        check_total("openai", inp + out, total)
    extra = None  # the usual call: no details, or only zeros
    if web_searches or _any_detail(ind) or _any_detail(outd):
        extra = _modalities(ind, outd, web_searches)
    return Usage(inp, cache_read if inp is not None else None,
                 cache_write if inp is not None else None, None, out, reasoning, extra,
                 as_str(tier) or as_str(u.get("service_tier")))


def _modalities(ind: dict[str, Any], outd: dict[str, Any],
                web_searches: int) -> dict[str, int] | None:
    """Audio and image token details (parts of the input and output counts)."""
    return units(input_audio_tokens=as_int(ind.get("audio_tokens")),
                 input_image_tokens=as_int(ind.get("image_tokens")),
                 output_audio_tokens=as_int(outd.get("audio_tokens")),
                 output_image_tokens=as_int(outd.get("image_tokens")),
                 cache_audio_read_tokens=as_int(dig(ind, "cached_tokens_details",
                                                    "audio_tokens")),
                 web_searches=web_searches)
