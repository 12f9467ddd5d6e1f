"""Header hygiene both ways, and attribution tags from `X-Meter-*` request headers.

Hop-by-hop headers (RFC 9110 section 7.6.1, plus any header named in `Connection`)
never cross the proxy. `X-Meter-*` headers are ours and never reach the upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["HOP_BY_HOP", "TagSet", "clean", "inbound", "outbound", "parse_tags", "credential",
           "tag_key"]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
METER_PREFIX = "x-meter-"
MAX_TAG_CHARS = 256
MAX_TAGS = 32
MAX_KEY_CHARS = 64
_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


def _connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    listed: set[str] = set()
    for value in headers.getall("Connection", []):
        listed.update(t.strip().lower() for t in value.split(",") if t.strip())
    return listed


def _filtered(items: Iterable[tuple[str, str]], drop: set[str],
              strip: tuple[str, ...] = ()) -> CIMultiDict[str]:
    drop = drop | HOP_BY_HOP  # one set to test; the caller's set is left as it was
    if strip:
        return CIMultiDict([(k, v) for k, v in items
                            if (lk := k.lower()) not in drop and not lk.startswith(strip)])
    return CIMultiDict([(k, v) for k, v in items if k.lower() not in drop])


def outbound(headers: CIMultiDictProxy[str], *, identity: bool = False,
             replace_auth: Mapping[str, str] | None = None,
             strip: tuple[str, ...] = (METER_PREFIX,)) -> CIMultiDict[str]:
    """Request headers for the upstream: no hop-by-hop, no Host, none whose lowercase name
    starts with one of `strip` (X-Meter-*, and the attribution families read)."""
    drop = _connection_listed(headers) | {"host", "content-length"}
    if replace_auth is not None:
        drop.update(_CREDENTIAL_HEADERS)
    out = _filtered(headers.items(), drop, strip)  # one pass over the request's headers
    if identity:
        out["Accept-Encoding"] = "identity"
    if replace_auth:
        out.update(replace_auth)
    return out


def inbound(headers: CIMultiDictProxy[str], *, drop_length: bool = False) -> CIMultiDict[str]:
    """Response headers for the client: no hop-by-hop (the body bytes pass unchanged)."""
    drop = _connection_listed(headers)
    if drop_length:
        drop.add("content-length")
    return _filtered(headers.items(), drop)


@dataclass
class TagSet:
    tags: dict[str, str] = field(default_factory=dict)
    cleaned: int = 0  # values truncated or stripped of unprintable characters


def clean(value: str) -> tuple[str, bool]:
    """A tag value (or end user): printable, stripped, at most MAX_TAG_CHARS; and whether
    that changed it."""
    text = "".join(ch for ch in value if ch.isprintable()).strip()
    changed = text != value
    if len(text) > MAX_TAG_CHARS:
        text, changed = text[:MAX_TAG_CHARS], True
    return text, changed


def parse_tags(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> TagSet:
    """`X-Meter-Parent-Run: r-6` -> {"parent_run": "r-6"}; never raises. `headers`: a
    mapping, or (name, value) pairs."""
    result = TagSet()
    for k, v in headers.items() if isinstance(headers, Mapping) else headers:
        lk = k.lower()
        if not lk.startswith(METER_PREFIX) or len(lk) == len(METER_PREFIX):
            continue
        key, key_changed = tag_key(lk[len(METER_PREFIX):])
        value, changed = clean(v)
        if not key:
            result.cleaned += 1
            continue
        if len(result.tags) >= MAX_TAGS and key not in result.tags:
            result.cleaned += 1
            continue
        result.tags[key] = value
        result.cleaned += changed or key_changed
    return result


def tag_key(name: str) -> tuple[str, bool]:
    """A tag's key from a header suffix or another tool's key: lowercase, `-` becomes `_`,
    printable, at most MAX_KEY_CHARS; and whether cleaning (not the spelling) changed it."""
    key, changed = clean(name.lower().replace("-", "_")[:MAX_KEY_CHARS])
    return key, changed


def credential(headers: Mapping[str, str]) -> str | None:
    """The provider credential the client sent, to fingerprint (never stored)."""
    for name in _CREDENTIAL_HEADERS:
        value = headers.get(name)
        if value and value.startswith("AWS4-HMAC-SHA256 "):
            # SigV4: the access key id names the credential; the signature changes per call
            cred = value.partition("Credential=")[2]
            return cred.split("/", 1)[0] or None
        if value:
            return value.removeprefix("Bearer ").strip()
    return None
