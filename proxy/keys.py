"""Consumer keys: what a key issued at run time is (its name, tags, what it may use, its
limits). Pure data: where keys are stored, looked up and revoked is the backends' and the
key registry's (`proxy/keyring.py`); this module names the shapes every part agrees on,
and the pure rules about them: a key's secret and its stored hash, what a request to
create or change a key may say, and which upstreams and models a key may use."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["ConsumerKey", "KeyLimits", "KeySpecError", "StoredKey", "allows", "from_row",
           "hash_secret", "new_id", "new_secret", "parse_expiry", "parse_spec"]

SECRET_PREFIX = "tb-"
ID_PREFIX = "key_"
_HASH_DOMAIN = b"tokenbooth consumer key\0"  # not the same HMAC as a credential fingerprint
_LIMIT_TYPES: dict[str, type] = {"requests_per_minute": int, "tokens_per_minute": int,
                                 "usd_per_minute": float}
_SPEC_FIELDS = ("name", "tags", "upstreams", "models", "expires_at", "limits")
_RELATIVE = re.compile(r"^([0-9]{1,6})\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


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


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key as the ledger keeps it: the key, the HMAC of its secret (never the secret),
    the secret's last four characters (to tell keys apart on a page), and its dates."""

    key: ConsumerKey
    hash: str
    last4: str
    created_at: str
    revoked_at: str | None = None
    expires: float | None = None  # expires_at as a Unix time (compared on every call)

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def refusal(self, now: float) -> str | None:
        """Why the key admits no call at `now` ("revoked", "expired"), or None: it does."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expired(now) else None

    def to_json(self) -> dict[str, Any]:
        """As the API and the CLI show it (never the secret, never its hash)."""
        k = self.key
        return {"id": k.id, "name": k.name, "tags": dict(k.tags),
                "upstreams": list(k.upstreams), "models": list(k.models),
                "expires_at": k.expires_at, "limits": limits_json(k.limits),
                "created_at": self.created_at, "revoked_at": self.revoked_at,
                "last4": self.last4}


class KeySpecError(ValueError):
    """A request to create or change a key says something a key cannot be."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def new_secret() -> str:
    """`tb-` and 32 random bytes, URL-safe base64 (43 characters)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_id() -> str:
    """A key's public id: `key_` and 12 hex digits (48 random bits)."""
    return ID_PREFIX + secrets.token_hex(6)


def hash_secret(install_secret: bytes, credential: str) -> str:
    """HMAC-SHA256 of a presented credential, keyed with the per-install secret: what the
    ledger stores and what the registry looks a credential up by."""
    return hmac.new(install_secret, _HASH_DOMAIN + credential.encode(),
                    hashlib.sha256).hexdigest()


def allows(patterns: tuple[str, ...], value: str | None) -> bool:
    """Whether `value` matches one of the globs (no globs: anything; no value: nothing to
    restrict)."""
    if not patterns or value is None:
        return True
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def limits_json(limits: KeyLimits) -> dict[str, Any]:
    return {"requests_per_minute": limits.requests_per_minute,
            "tokens_per_minute": limits.tokens_per_minute,
            "usd_per_minute": limits.usd_per_minute}


def iso(when: datetime) -> str:
    """The ledger's timestamp text (UTC, milliseconds, Z)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{when.astimezone(UTC).microsecond // 1000:03d}Z"


def parse_expiry(value: Any, now: datetime | None = None) -> str | None:
    """An expiry as the ledger keeps it: None, an ISO-8601 date or time (UTC unless it says
    otherwise), or a duration from now (`30d`, `12h`, `90m`, `2w`)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise KeySpecError("expires_at", "expected an ISO-8601 time, a duration like 30d, "
                                         "or null")
    text = value.strip()
    m = _RELATIVE.match(text)
    try:
        if m:
            when = (now or datetime.now(UTC)) + timedelta(**{_UNITS[m.group(2)]:
                                                             int(m.group(1))})
        else:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise KeySpecError("expires_at", f"{value!r} is not an ISO-8601 time like "
                                         f"2027-01-31T00:00:00Z or a duration like 30d") from None
    return iso(when)


def _globs(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise KeySpecError(name, "expected a list of non-empty glob strings, e.g. "
                                 "[\"openai\", \"gpt-4o*\"]")
    return tuple(value)


def _tags(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()):
        raise KeySpecError("tags", "expected an object of string values, e.g. "
                                   "{\"team\": \"research\"}")
    return {k.lower(): v for k, v in value.items()}


def _limits(value: Any) -> KeyLimits:
    if value is None:
        return KeyLimits()
    if not isinstance(value, dict):
        raise KeySpecError("limits", "expected an object with requests_per_minute, "
                                     "tokens_per_minute, usd_per_minute")
    unknown = sorted(set(value) - set(_LIMIT_TYPES))
    if unknown:
        raise KeySpecError(f"limits.{unknown[0]}", "unknown limit (known: "
                           + ", ".join(_LIMIT_TYPES) + ")")
    out: dict[str, Any] = {}
    for name, kind in _LIMIT_TYPES.items():
        v = value.get(name)
        if v is None:
            continue
        ok = isinstance(v, int) if kind is int else isinstance(v, int | float)
        if isinstance(v, bool) or not ok or v <= 0 or v != v or v == float("inf"):
            raise KeySpecError(f"limits.{name}", f"expected a positive "
                               f"{'whole number' if kind is int else 'number'} or null")
        out[name] = kind(v)
    return KeyLimits(**out)


def parse_spec(doc: Any, partial: bool = False,
               now: datetime | None = None) -> dict[str, Any]:
    """What a request to create (`partial` False: `name` required) or change a key says,
    checked: {field: value} with only the fields it names (values as `ConsumerKey` holds
    them)."""
    if not isinstance(doc, dict):
        raise KeySpecError("body", "expected a JSON object")
    unknown = sorted(set(doc) - set(_SPEC_FIELDS))
    if unknown:
        raise KeySpecError(unknown[0], "unknown field (known: " + ", ".join(_SPEC_FIELDS)
                           + ")")
    out: dict[str, Any] = {}
    if "name" in doc or not partial:
        name = doc.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise KeySpecError("name", "required: a non-empty string (at most 200 "
                                       "characters)")
        out["name"] = name.strip()
    if "tags" in doc:
        out["tags"] = _tags(doc["tags"])
    for g in ("upstreams", "models"):
        if g in doc:
            out[g] = _globs(g, doc[g])
    if "expires_at" in doc:
        out["expires_at"] = parse_expiry(doc["expires_at"], now)
    if "limits" in doc:
        out["limits"] = _limits(doc["limits"])
    return out


def to_row(stored: StoredKey) -> dict[str, Any]:
    """A stored key as the ledger's `tb_keys` columns."""
    k = stored.key
    return {"id": k.id, "name": k.name, "hash": stored.hash, "last4": stored.last4,
            "tags": json.dumps(k.tags, sort_keys=True),
            "upstreams": json.dumps(list(k.upstreams)), "models": json.dumps(list(k.models)),
            "expires_at": k.expires_at, "limits": json.dumps(limits_json(k.limits)),
            "created_at": stored.created_at, "revoked_at": stored.revoked_at}


def from_row(row: Mapping[str, Any]) -> StoredKey:
    """A `tb_keys` row as a StoredKey."""
    limits = json.loads(row["limits"] or "{}")
    expires_at = row["expires_at"]
    key = ConsumerKey(row["id"], row["name"], json.loads(row["tags"] or "{}"),
                      tuple(json.loads(row["upstreams"] or "[]")),
                      tuple(json.loads(row["models"] or "[]")), expires_at,
                      KeyLimits(**{k: v for k, v in limits.items() if k in _LIMIT_TYPES}))
    expires = datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp() \
        if expires_at else None
    return StoredKey(key, row["hash"], row["last4"], row["created_at"], row["revoked_at"],
                     expires)
