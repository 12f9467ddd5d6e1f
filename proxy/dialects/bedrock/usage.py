"""Bedrock Converse `usage` and InvokeModel invocation metrics into billed units."""

from __future__ import annotations

from typing import Any

from proxy.usage import Usage, as_int, check_total

__all__ = ["from_bedrock"]


def from_bedrock(u: dict[str, Any]) -> Usage:
    """Bedrock Converse `usage`: inputTokens excludes cache reads and writes (totalTokens
    includes them); `cacheDetails` splits writes by TTL. Also the InvokeModel
    `amazon-bedrock-invocationMetrics` spelling (`inputTokenCount`, ...)."""
    base = as_int(u.get("inputTokens"))
    if base is None:
        base = as_int(u.get("inputTokenCount"))
    read = as_int(u.get("cacheReadInputTokens"))
    if read is None:
        read = as_int(u.get("cacheReadInputTokenCount"))
    write = as_int(u.get("cacheWriteInputTokens"))
    if write is None:
        write = as_int(u.get("cacheWriteInputTokenCount"))
    write_1h = None
    for d in u.get("cacheDetails") or ():
        n = as_int(d.get("inputTokens")) if isinstance(d, dict) else None
        if n and d.get("ttl") in ("1h", "ONE_HOUR"):
            write_1h = (write_1h or 0) + n
    out = as_int(u.get("outputTokens"))
    if out is None:
        out = as_int(u.get("outputTokenCount"))
    inp = None if base is None else base + (read or 0) + (write or 0)
    if inp is not None and out is not None:
        check_total("bedrock", inp + out, as_int(u.get("totalTokens")))
    return Usage(inp, (read or 0) if inp is not None else None,
                 (write or 0) if inp is not None else None, write_1h, out, None)
