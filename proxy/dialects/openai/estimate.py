"""Input-token estimates for OpenAI request shapes (the cookbook's counting rules)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.estimate import strings

__all__ = ["chat_tokens", "tools_tokens"]

# Models that use the older tools constants (function init 10, not 7) in the cookbook.
_OLD_TOOLS = ("gpt-3.5", "gpt-35", "gpt-4-", "gpt-4")


def chat_tokens(messages: list[Any], count: Callable[[str], int]) -> int:
    """OpenAI cookbook: 3 per message, every string value, +1 per name, +3 reply priming."""
    total = 3
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        total += 3
        for key, value in msg.items():
            if isinstance(value, str):
                total += count(value)
            elif key == "content" and isinstance(value, list):
                for part in value:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        total += count(part["text"])
                    elif isinstance(part, dict) and part.get("type") == "image_url":
                        total += 85  # low-detail image tile; a floor, not exact
            elif key == "tool_calls" and isinstance(value, list):
                total += sum(count(s) for s in strings(value))
            if key == "name":
                total += 1
    return total


def _old_tools_model(model: str | None) -> bool:
    m = (model or "").lower().rsplit("/", 1)[-1]
    return m.startswith(_OLD_TOOLS) and not m.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5"))


def tools_tokens(tools: Any, count: Callable[[str], int], model: str | None = None) -> int:
    """OpenAI cookbook `num_tokens_for_tools`: gpt-3.5 / gpt-4 use a function init of 10,
    the gpt-4o family and later 7; the other constants are shared."""
    if not isinstance(tools, list) or not tools:
        return 0
    func_init = 10 if _old_tools_model(model) else 7
    prop_init, prop_key, enum_init, enum_item, func_end = 3, 3, -3, 3, 12
    total = 0
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict):
            continue
        total += func_init
        desc = str(fn.get("description", "")).rstrip(".")
        total += count(f"{fn.get('name', '')}:{desc}")
        props = (fn.get("parameters") or {}).get("properties") or {}
        if props:
            total += prop_init
            for key, spec in props.items():
                spec = spec if isinstance(spec, dict) else {}
                total += prop_key
                if isinstance(spec.get("enum"), list):
                    total += enum_init
                    for item in spec["enum"]:
                        total += enum_item + count(str(item))
                p_desc = str(spec.get("description", ""))
                if p_desc.endswith("."):
                    p_desc = p_desc[:-1]
                total += count(f"{key}:{spec.get('type', '')}:{p_desc}")
    return total + func_end
