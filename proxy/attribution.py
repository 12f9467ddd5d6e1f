"""Attribution from what other tools' clients already send: Helicone, LiteLLM and Portkey
headers, LiteLLM's body tags, and the bodies' own end user. Sans-IO: headers and the parsed
request in, the call's tags and end user out.

One table (`HEADERS`) says which header fills which tag or the end user; `STRIPPED` says which
headers each family removes before forwarding. Precedence, first source wins: `X-Meter-*`
(the proxy's own, always read), then the consumer key's tags (set by proxy.forward after
authentication, over any tag read here but those of `X-Meter-*`), then Helicone, Portkey,
LiteLLM's header, LiteLLM's body tags, the body's own end user, and last the client SDK's
own tags (Claude Code's session).
A family switched off in `attribution:` is neither read nor stripped. Values are cleaned and
capped as `X-Meter-*` values are (counted in `tags_cleaned`); an unreadable value (bad
`x-portkey-metadata` JSON) is skipped and counted in `attribution_unreadable`, never failing
the call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from proxy.config.model import AttributionConfig
from proxy.headers import MAX_TAGS, METER_PREFIX, clean, parse_tags, tag_key
from proxy.record import CallFacts

__all__ = ["FAMILIES", "HEADERS", "STRIPPED", "HeaderRule", "read_body", "read_headers",
           "stripped"]

FAMILIES = ("helicone", "portkey", "litellm")  # header families, in precedence order
END_USER = "end_user"  # X-Meter-End-User fills the column too (and stays a tag)


def _tag(facts: CallFacts, key: str, value: str) -> None:
    """A tag under those already set (an earlier source's stays), cleaned and capped like an
    `X-Meter-*` tag."""
    key, key_changed = tag_key(key)
    if not key:
        facts.tags_cleaned += 1
        return
    if key in facts.tags:
        return
    if len(facts.tags) >= MAX_TAGS:
        facts.tags_cleaned += 1
        return
    value, changed = clean(value)
    facts.tags[key] = value
    facts.tags_cleaned += changed or key_changed


def _user(facts: CallFacts, value: str) -> None:
    """The end user, unless an earlier source named one."""
    if facts.end_user is not None:
        return
    value, changed = clean(value)
    if value:
        facts.end_user = value
        facts.tags_cleaned += changed


# Readers: (facts, what follows the rule's prefix, the header's value)
Reader = Callable[[CallFacts, str, str], None]


def _as_tag(key: str) -> Reader:
    return lambda facts, _, value: _tag(facts, key, value)


def _suffix_tag(facts: CallFacts, suffix: str, value: str) -> None:
    if suffix:
        _tag(facts, suffix, value)


def _as_user(facts: CallFacts, _: str, value: str) -> None:
    _user(facts, value)


def _entries(facts: CallFacts, entries: list[str]) -> None:
    """LiteLLM tags: each `k:v` or `k=v` entry is also tag `k` (plain entries are not)."""
    for entry in entries:
        cut = min((i for i in (entry.find(":"), entry.find("=")) if i > 0), default=-1)
        if cut > 0:
            key, value = entry[:cut].strip(), entry[cut + 1:].strip()
            if key and value:
                _tag(facts, key, value)


def _litellm_tags(facts: CallFacts, _: str, value: str) -> None:
    """`x-litellm-tags: a,team:ml` -> `litellm_tags` = `a,team:ml`, `team` = `ml`."""
    _tag(facts, "litellm_tags", value)
    _entries(facts, [e.strip() for e in value.split(",")])


def _scalar(value: Any) -> str | None:
    """A metadata value as tag text: strings as sent, other JSON compact; null is none."""
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _portkey_metadata(facts: CallFacts, _: str, value: str) -> None:
    """`x-portkey-metadata: {"team": "ml", "_user": "u-1"}` -> tag `team`, end user `u-1`."""
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        facts.attribution_unreadable += 1
        return
    for key, item in doc.items():
        if key == "_user":  # Portkey's reserved key for the end user: a string (or an id)
            if isinstance(item, str | int) and not isinstance(item, bool):
                _user(facts, str(item))
        elif (text := _scalar(item)) is not None:
            _tag(facts, key, text)


@dataclass(frozen=True, slots=True)
class HeaderRule:
    family: str
    header: str  # lowercase; a prefix when it ends with `-`
    read: Reader  # fills tags and the end user (docs/reference.md: the table of them all)


HEADERS: tuple[HeaderRule, ...] = (
    HeaderRule("helicone", "helicone-property-", _suffix_tag),  # tag <k>
    HeaderRule("helicone", "helicone-user-id", _as_user),
    HeaderRule("helicone", "helicone-session-id", _as_tag("session")),
    HeaderRule("helicone", "helicone-session-path", _as_tag("session_path")),
    HeaderRule("helicone", "helicone-session-name", _as_tag("session_name")),
    HeaderRule("portkey", "x-portkey-metadata", _portkey_metadata),  # tags, `_user` end user
    HeaderRule("portkey", "x-portkey-trace-id", _as_tag("trace_id")),
    HeaderRule("litellm", "x-litellm-tags", _litellm_tags),  # litellm_tags, `k:v` tag k
)
# Every header of a family read is removed before forwarding: none is the provider's, and
# some carry the tool's own key (Helicone-Auth, x-litellm-api-key, x-portkey-api-key).
STRIPPED = {"helicone": "helicone-", "portkey": "x-portkey-", "litellm": "x-litellm-"}

_EXACT = {r.header: r for r in HEADERS if not r.header.endswith("-")}
_PREFIXED = tuple(r for r in HEADERS if r.header.endswith("-"))
_RANK = {f: i for i, f in enumerate(FAMILIES)}


@cache
def _on(config: AttributionConfig) -> tuple[str, ...]:
    return tuple(f for f in FAMILIES if getattr(config, f))


@cache
def stripped(config: AttributionConfig) -> tuple[str, ...]:
    """The header name prefixes removed before forwarding: ours, and each family's read."""
    return (METER_PREFIX, *(STRIPPED[f] for f in _on(config)))


def read_headers(facts: CallFacts, headers: Mapping[str, str],
                 config: AttributionConfig) -> None:
    """The call's tags and end user from its headers, in one pass: `X-Meter-*` first
    (`X-Meter-End-User` is the end user before any other), then each family switched on."""
    prefixes = stripped(config)
    # Most calls carry none of these headers: one pass in a comprehension finds that.
    picked = [(lk, v) for k, v in headers.items() if (lk := k.lower()).startswith(prefixes)]
    if not picked:
        facts.tags, facts.tags_cleaned, facts.meter_tag_keys = {}, 0, frozenset()
        return
    families = _on(config)
    meter: list[tuple[str, str]] = []
    hits: list[tuple[int, int, HeaderRule, str, str]] = []
    for lk, v in picked:
        if lk.startswith(METER_PREFIX):
            meter.append((lk, v))
            continue
        rule = _EXACT.get(lk)
        suffix = ""
        if rule is None:
            rule = next((r for r in _PREFIXED if lk.startswith(r.header)), None)
            if rule is None:
                continue  # stripped, never read (Helicone-Auth and the like)
            suffix = lk[len(rule.header):]
        if rule.family in families:
            hits.append((_RANK[rule.family], len(hits), rule, suffix, v))
    tagset = parse_tags(meter)
    facts.tags, facts.tags_cleaned = tagset.tags, tagset.cleaned
    facts.meter_tag_keys = frozenset(tagset.tags)  # a consumer key's tags yield only to these
    meter_user = tagset.tags.get(END_USER)
    if meter_user:
        facts.end_user = meter_user
    hits.sort(key=lambda h: h[:2])
    for _, _, rule, suffix, value in hits:
        try:
            rule.read(facts, suffix, value)
        except Exception:  # a reader's bug never fails the call
            facts.attribution_unreadable += 1


def read_body(facts: CallFacts, config: AttributionConfig) -> None:
    """What the parsed request says (never the body's bytes): LiteLLM's `metadata.tags`,
    then the body's own end user (OpenAI `user`, Anthropic `metadata.user_id`, as the
    dialect read them), under everything the headers said."""
    doc = facts.request_doc
    if config.litellm and isinstance(doc, dict):
        meta = doc.get("metadata")
        tags = meta.get("tags") if isinstance(meta, dict) else None
        if isinstance(tags, list):
            entries = [t.strip() for t in tags if isinstance(t, str) and t.strip()]
            if entries:
                _tag(facts, "litellm_tags", ",".join(entries))
                _entries(facts, entries)
    info = facts.request_info
    if config.body_user and info is not None and info.end_user:
        _user(facts, info.end_user)
