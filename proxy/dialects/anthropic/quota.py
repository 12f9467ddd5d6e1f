"""Anthropic's rate-limit and quota headers, read without I/O: the unified windows of a
Claude subscription (Pro, Max: what Claude Code spends), and the API's limits.

On a subscription every response carries `anthropic-ratelimit-unified-5h-utilization`
(the spent fraction of the 5-hour window, `0.42`), `-5h-reset` (epoch seconds) and
`-5h-status` (`allowed`, `allowed_warning`, `rejected`), the same for `7d` (and for
model-scoped weekly windows such as `7d_opus` when the plan has them), plus the account's
`anthropic-ratelimit-unified-status`, `-reset`, `-representative-claim`,
`-fallback-percentage` and `-overage-*`. An API key's responses carry
`anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`
(reset in RFC 3339). Every `anthropic-ratelimit-*` header is kept as sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from proxy.quota import Quota, QuotaWindow, kept_headers, limit_window, parse_number, parse_reset

__all__ = ["read_quota"]

_PREFIXES = ("anthropic-ratelimit-",)
_UNIFIED = re.compile(r"anthropic-ratelimit-unified-([0-9a-z_]{1,32})-utilization")
_LIMIT = re.compile(r"anthropic-ratelimit-((?!unified-)[a-z-]{1,32})-limit")
_FIRST = ("5h", "7d")  # the subscription's own windows lead


def read_quota(headers: Mapping[str, str], now: float) -> Quota | None:
    """The quota a response reports (None: no such header); `now` is when it arrived."""
    kept = kept_headers(headers, _PREFIXES)
    if not kept:
        return None
    windows = []
    for key, value in kept.items():
        if key.endswith("-utilization") and (m := _UNIFIED.fullmatch(key)):
            base = f"anthropic-ratelimit-unified-{m.group(1)}-"
            windows.append(QuotaWindow(m.group(1), parse_number(value),
                                       parse_reset(kept.get(base + "reset"), now),
                                       kept.get(base + "status")))
        elif key.endswith("-limit") and (m := _LIMIT.fullmatch(key)):
            base = f"anthropic-ratelimit-{m.group(1)}-"
            windows.append(limit_window(m.group(1), value, kept.get(base + "remaining"),
                                        kept.get(base + "reset"), now))
    windows.sort(key=lambda w: (w.name not in _FIRST, w.name))
    return Quota(kept, tuple(windows), now, kept.get("anthropic-ratelimit-unified-status"))
