"""OpenAI's rate-limit headers (and those of the OpenAI-compatible servers that copy
them: Groq, Mistral, ...), read without I/O.

A response carries `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests` and
`x-ratelimit-reset-requests` (a time from now: `1s`, `6m0s`, `20ms`), and the same for
`tokens`. Each limit/remaining pair is a window named by its suffix (`requests`, `tokens`)
whose utilization is 1 - remaining/limit. Every `x-ratelimit-*` header is kept as sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from proxy.quota import Quota, kept_headers, limit_window

__all__ = ["read_quota"]

_PREFIXES = ("x-ratelimit-",)
_NAME = re.compile(r"[a-z0-9_-]{1,32}")  # a window's name, from x-ratelimit-limit-<name>


def read_quota(headers: Mapping[str, str], now: float) -> Quota | None:
    """The quota a response reports (None: no such header); `now` is when it arrived."""
    kept = kept_headers(headers, _PREFIXES)
    if not kept:
        return None
    windows = []
    for key, value in kept.items():
        if key.startswith("x-ratelimit-limit-") and _NAME.fullmatch(name := key[18:]):
            windows.append(limit_window(name, value, kept.get(f"x-ratelimit-remaining-{name}"),
                                        kept.get(f"x-ratelimit-reset-{name}"), now))
    windows.sort(key=lambda w: w.name)
    return Quota(kept, tuple(windows), now)
