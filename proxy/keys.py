"""Consumer keys: what a key issued at run time is (its name, tags, what it may use, its
limits). Pure data: where keys are stored, looked up and revoked is the backends' and the
key registry's; this module only names the shapes every part agrees on."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ConsumerKey", "KeyLimits"]


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's own rate limits (None: no limit of that kind)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    usd_per_minute: float | None = None


@dataclass(frozen=True, slots=True)
class ConsumerKey:
    """One consumer key as admission and the record see it (never its secret).

    `name` fills the call's `client`; `tags` are added to the call's tags (X-Meter-* wins);
    `upstreams` and `models` are globs the call must match (empty: any); `expires_at` is a
    UTC ISO-8601 text or None."""

    id: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    upstreams: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    expires_at: str | None = None
    limits: KeyLimits = KeyLimits()
