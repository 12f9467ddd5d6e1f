"""Ollama native counts into billed units."""

from __future__ import annotations

from typing import Any

from proxy.usage import Usage, as_int

__all__ = ["from_ollama"]


def from_ollama(doc: dict[str, Any]) -> Usage:
    """Ollama native: prompt_eval_count is omitempty, so missing means unknown."""
    inp = as_int(doc.get("prompt_eval_count"))
    out = as_int(doc.get("eval_count"))
    return Usage(inp, None, None, None, out, None)
