"""Gemini / Vertex `usageMetadata` into billed units."""

from __future__ import annotations

from typing import Any

from proxy.usage import Usage, as_int, as_str, check_total

__all__ = ["from_gemini"]


def _modalities(details: Any, count_key: str = "tokenCount") -> dict[str, int]:
    """Gemini `[{modality: AUDIO, tokenCount: n}, ...]` -> {"audio": n, ...}."""
    out: dict[str, int] = {}
    for d in details if isinstance(details, list) else ():
        if isinstance(d, dict) and isinstance(d.get("modality"), str):
            n = as_int(d.get(count_key))
            if n:
                key = d["modality"].lower()
                out[key] = out.get(key, 0) + n
    return out


def from_gemini(u: dict[str, Any]) -> Usage:
    """Gemini: thoughts sit outside candidates and tool-use prompt outside prompt."""
    prompt = as_int(u.get("promptTokenCount"))
    tool = as_int(u.get("toolUsePromptTokenCount")) or 0
    cached = as_int(u.get("cachedContentTokenCount"))
    cand = as_int(u.get("candidatesTokenCount"))
    thoughts = as_int(u.get("thoughtsTokenCount"))
    inp = None if prompt is None else prompt + tool
    out = None
    if cand is not None or thoughts is not None or prompt is not None:
        out = (cand or 0) + (thoughts or 0)
    total = as_int(u.get("totalTokenCount"))
    if inp is not None and out is not None:
        check_total("gemini", inp + out, total)
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
                 as_str(u.get("serviceTier")) or as_str(u.get("trafficType")))
