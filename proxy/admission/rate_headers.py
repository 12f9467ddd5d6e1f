"""The response's rate-limit headers: what they say (`RateView`, the tightest requests and
tokens limit among those a call matched, worked out from the windows' figures by `view_of`)
and how they are written in the caller's SDK's style (`headers_for`: Anthropic's
`anthropic-ratelimit-*` with RFC 3339 resets, OpenAI's `x-ratelimit-*` with Go-style
durations, `openai_duration`). Admission makes the view (`proxy/admission/rates.py`); the
Forwarder writes the headers, on an admitted call's response and on a refusal."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache

from proxy.admission.rate_window import MINUTE, Figures
from proxy.config import RateLimitConfig
from proxy.value import value

__all__ = ["Dim", "RateView", "headers_for", "openai_duration", "view_of"]


@value
class Dim:
    """One kind of limit for the headers: its limit, what remains, seconds to full reset."""

    limit: int
    remaining: int
    reset: float


@value
class RateView:
    """What the response's rate-limit headers say: the tightest requests and tokens limit
    among those the call matched (None: no limit of that kind applied)."""

    requests: Dim | None
    tokens: Dim | None


def _tightest(dims: Sequence[Dim]) -> Dim | None:
    return min(dims, key=lambda d: (d.remaining, -d.reset)) if dims else None


def view_of(limits: Sequence[RateLimitConfig], figures: Sequence[Figures], tokens: int,
            admitted: bool) -> RateView:
    """The headers' figures: after this call when admitted (its admission is the newest:
    a full reset is a minute away), else as they stand."""
    reqs, toks = [], []
    for cfg, f in zip(limits, figures, strict=True):
        reset = MINUTE if admitted else (MINUTE - f.newest_age if f.newest_age is not None
                                         else 0.0)
        if cfg.requests_per_minute is not None:
            used = f.requests + (1 if admitted else 0)
            reqs.append(Dim(cfg.requests_per_minute,
                            max(0, cfg.requests_per_minute - used), reset))
        if cfg.tokens_per_minute is not None:
            used = f.tokens + (tokens if admitted else 0)
            toks.append(Dim(cfg.tokens_per_minute, max(0, cfg.tokens_per_minute - used), reset))
    return RateView(_tightest(reqs), _tightest(toks))


@lru_cache(maxsize=1024)
def openai_duration(seconds: float) -> str:
    """A duration as OpenAI's `x-ratelimit-reset-*` writes it (Go style): `20ms`, `1s`,
    `17.28s`, `6m0s`, `1h0m0s`."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(math.ceil(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def headers_for(view: RateView | None, provider: str, now: float | None = None
                ) -> dict[str, str]:
    """The rate-limit headers in the caller's SDK's style: Anthropic's names
    (`anthropic-ratelimit-requests-limit`, `-remaining`, `-reset` as RFC 3339) for an
    Anthropic caller, OpenAI's (`x-ratelimit-limit-requests`, `-remaining-`, `-reset-` as a
    duration) for every other."""
    if view is None:
        return {}
    out: dict[str, str] = {}
    wall = time.time() if now is None else now
    for kind, dim in (("requests", view.requests), ("tokens", view.tokens)):
        if dim is None:
            continue
        if provider == "anthropic":
            out[f"anthropic-ratelimit-{kind}-limit"] = str(dim.limit)
            out[f"anthropic-ratelimit-{kind}-remaining"] = str(dim.remaining)
            out[f"anthropic-ratelimit-{kind}-reset"] = _rfc3339(wall + dim.reset)
        else:
            out[f"x-ratelimit-limit-{kind}"] = str(dim.limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(dim.remaining)
            out[f"x-ratelimit-reset-{kind}"] = openai_duration(dim.reset)
    return out
