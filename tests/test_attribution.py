"""Other tools' attribution, pushed through as plain values: real header multidicts and
request bodies read by the real dialects; the call's tags, end user and counters come out,
and the families' headers are the ones removed before forwarding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.attribution import HEADERS, STRIPPED, read_body, read_headers, stripped
from proxy.config import AttributionConfig, parse
from proxy.dialects import DIALECTS
from proxy.headers import MAX_TAG_CHARS, MAX_TAGS, outbound
from proxy.record import CallFacts

ROOT = Path(__file__).resolve().parent.parent
ALL_ON = AttributionConfig()


def attributed(*pairs: tuple[str, str], doc: Any = None, parser: str = "openai.chat",
               config: AttributionConfig = ALL_ON) -> CallFacts:
    """What the handler does: the headers (X-Meter-* and the families'), then the parsed
    body."""
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    facts = CallFacts("c1", 0.0, 0.0, "openai", "openai", "chat", "POST", "/openai/x")
    read_headers(facts, headers, config)
    if doc is not None:
        facts.request_doc = doc
        facts.request_info = DIALECTS[parser].request_info(doc)
    read_body(facts, config)
    return facts


def test_helicone_properties_user_and_session() -> None:
    f = attributed(("Helicone-Property-Team", "ml"), ("helicone-property-cost-center", "42"),
                   ("Helicone-User-Id", "alice"), ("Helicone-Session-Id", "s-1"),
                   ("Helicone-Session-Path", "/plan/step-2"),
                   ("Helicone-Session-Name", "Trip planner"),
                   ("Helicone-Auth", "Bearer sk-helicone-secret"),
                   ("Helicone-Cache-Enabled", "true"))
    assert f.tags == {"team": "ml", "cost_center": "42", "session": "s-1",
                      "session_path": "/plan/step-2", "session_name": "Trip planner"}
    assert f.end_user == "alice"
    assert (f.tags_cleaned, f.attribution_unreadable) == (0, 0)
    # the Helicone key is never read into anything recorded
    assert "sk-helicone-secret" not in repr((f.tags, f.end_user))


def test_litellm_tags_as_sent_and_each_key_value_entry() -> None:
    f = attributed(("x-litellm-tags", "a,team:ml, env=prod ,:x,k:,url:http://h:1"))
    assert f.tags == {"litellm_tags": "a,team:ml, env=prod ,:x,k:,url:http://h:1",
                      "team": "ml", "env": "prod", "url": "http://h:1"}
    assert f.end_user is None and f.tags_cleaned == 0


def test_litellm_body_tags_and_user_read_from_the_parsed_request() -> None:
    doc = {"model": "gpt-4o", "messages": [], "user": "u-7",
           "metadata": {"tags": ["batch", "team:infra", 3, " job=nightly "]}}
    f = attributed(doc=doc)
    assert f.tags == {"litellm_tags": "batch,team:infra,job=nightly", "team": "infra",
                      "job": "nightly"}
    assert f.end_user == "u-7"
    # the header is read first: its tags win over the body's, key by key
    f = attributed(("x-litellm-tags", "team:ml"), doc=doc)
    assert f.tags == {"litellm_tags": "team:ml", "team": "ml", "job": "nightly"}
    # OpenAI's own `metadata` (string values) is no LiteLLM tag list: nothing read
    f = attributed(doc={"model": "gpt-4o", "metadata": {"tags": "a,b"}})
    assert f.tags == {} and f.attribution_unreadable == 0


def test_portkey_metadata_and_trace_id() -> None:
    meta = {"team": "ml", "_user": "bob", "retries": 3, "beta": True, "gone": None,
            "nested": {"a": [1, 2]}, "Env-Name": "prod"}
    f = attributed(("x-portkey-metadata", json.dumps(meta)), ("x-portkey-trace-id", "tr-9"),
                   ("x-portkey-api-key", "pk-secret"), ("x-portkey-virtual-key", "vk-1"))
    assert f.tags == {"team": "ml", "retries": "3", "beta": "true",
                      "nested": '{"a":[1,2]}', "env_name": "prod", "trace_id": "tr-9"}
    assert f.end_user == "bob"
    assert "pk-secret" not in repr((f.tags, f.end_user))


def test_portkey_user_only_as_a_string_or_an_id() -> None:
    assert attributed(("x-portkey-metadata", '{"_user": 42}')).end_user == "42"
    f = attributed(("x-portkey-metadata", '{"_user": {"id": 1}, "team": "ml"}'))
    assert f.end_user is None and f.tags == {"team": "ml"}
    assert attributed(("x-portkey-metadata", '{"_user": true}')).end_user is None


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '"text"', "", "null"])
def test_unreadable_portkey_metadata_is_skipped_and_counted(bad: str) -> None:
    f = attributed(("x-portkey-metadata", bad), ("x-portkey-trace-id", "tr-1"))
    assert f.tags == {"trace_id": "tr-1"} and f.end_user is None
    assert f.attribution_unreadable == 1


def test_the_bodies_own_end_user() -> None:
    assert attributed(doc={"model": "gpt-4o", "user": "u-1"}).end_user == "u-1"
    assert attributed(doc={"model": "o3", "input": "hi", "safety_identifier": "h-1"},
                      parser="openai.responses").end_user == "h-1"
    assert attributed(doc={"model": "claude-sonnet-4-5", "max_tokens": 5,
                           "metadata": {"user_id": "acct-3"}},
                      parser="anthropic.messages").end_user == "acct-3"


def test_x_meter_wins_then_helicone_portkey_litellm_body_whatever_the_header_order() -> None:
    every = [("x-litellm-tags", "team:litellm,env:litellm,tier:litellm,step:litellm"),
             ("x-portkey-metadata", json.dumps({"team": "portkey", "env": "portkey",
                                                "tier": "portkey", "_user": "u-portkey"})),
             ("Helicone-Property-Team", "helicone"), ("Helicone-Property-Env", "helicone"),
             ("Helicone-User-Id", "u-helicone"),
             ("X-Meter-Team", "meter"), ("X-Meter-End-User", "u-meter")]
    doc = {"model": "gpt-4o", "user": "u-body",
           "metadata": {"tags": ["team:body", "step:body", "phase:body"]}}
    for pairs in (every, every[::-1]):
        f = attributed(*pairs, doc=doc)
        assert {k: f.tags[k] for k in ("team", "env", "tier", "step", "phase")} == {
            "team": "meter", "env": "helicone", "tier": "portkey", "step": "litellm",
            "phase": "body"}
        assert f.end_user == "u-meter" and f.tags["end_user"] == "u-meter"
    # without X-Meter-End-User: Helicone's, then Portkey's `_user`, then the body's
    assert attributed(*every[:-1], doc=doc).end_user == "u-helicone"
    assert attributed(*every[:2], doc=doc).end_user == "u-portkey"
    assert attributed(*every[:1], doc=doc).end_user == "u-body"


def test_a_family_switched_off_is_neither_read_nor_stripped() -> None:
    pairs = (("Helicone-Property-Team", "ml"), ("Helicone-User-Id", "alice"),
             ("x-litellm-tags", "env:prod"), ("x-portkey-trace-id", "tr-1"),
             ("X-Meter-Agent", "planner"))
    doc = {"model": "gpt-4o", "user": "u-body", "metadata": {"tags": ["job:nightly"]}}
    off = AttributionConfig(helicone=False, litellm=False, portkey=False, body_user=False)
    f = attributed(*pairs, doc=doc, config=off)
    assert f.tags == {"agent": "planner"} and f.end_user is None
    assert stripped(off) == ("x-meter-",)
    sent = outbound(CIMultiDictProxy(CIMultiDict(pairs)), strip=stripped(off))
    assert list(sent) == ["Helicone-Property-Team", "Helicone-User-Id", "x-litellm-tags",
                          "x-portkey-trace-id"]
    # one family off: only that one passes through; the others are read and stripped
    some = AttributionConfig(helicone=False)
    f = attributed(*pairs, doc=doc, config=some)
    assert f.tags == {"agent": "planner", "env": "prod", "litellm_tags": "env:prod",
                      "trace_id": "tr-1", "job": "nightly"} and f.end_user == "u-body"
    sent = outbound(CIMultiDictProxy(CIMultiDict(pairs)), strip=stripped(some))
    assert list(sent) == ["Helicone-Property-Team", "Helicone-User-Id"]
    # body_user off alone: the headers still name the end user
    assert attributed(*pairs, doc=doc, config=AttributionConfig(body_user=False)
                      ).end_user == "alice"


def test_every_family_header_is_removed_before_forwarding_the_rest_kept() -> None:
    sent = CIMultiDictProxy(CIMultiDict((
        ("Helicone-Auth", "Bearer sk-h"), ("helicone-property-x", "1"),
        ("x-litellm-api-key", "sk-l"), ("X-LiteLLM-Tags", "a"),
        ("x-portkey-api-key", "pk"), ("X-Portkey-Metadata", "{}"), ("X-Meter-Run", "r"),
        ("Authorization", "Bearer sk-provider"), ("X-Helicone-Like", "kept"),
        ("Content-Type", "application/json"))))
    got = outbound(sent, strip=stripped(ALL_ON))
    assert list(got.items()) == [("Authorization", "Bearer sk-provider"),
                                 ("X-Helicone-Like", "kept"),
                                 ("Content-Type", "application/json")]


def test_values_cleaned_and_capped_like_x_meter_tags() -> None:
    f = attributed(("Helicone-Property-Note", "a\x00b\x1bc"),
                   ("Helicone-Property-Long", "x" * 1000),
                   ("Helicone-Property-" + "k" * 100, "v"),
                   ("Helicone-User-Id", "u" * 300),
                   ("x-portkey-metadata", json.dumps({"tab\t": "1"})))
    assert f.tags["note"] == "abc" and f.tags["long"] == "x" * MAX_TAG_CHARS
    assert f.tags["k" * 64] == "v" and f.tags["tab"] == "1"
    assert f.end_user == "u" * MAX_TAG_CHARS
    # note, long, the user, the tab in a key (a long key is cut, not counted: as X-Meter-*)
    assert f.tags_cleaned == 4
    # the tag cap counts every tag of the call: X-Meter-* ones first
    meter = [(f"X-Meter-K{i}", str(i)) for i in range(MAX_TAGS - 1)]
    f = attributed(*meter, ("Helicone-Property-A", "1"), ("Helicone-Property-B", "2"),
                   ("x-litellm-tags", "c:3"))
    assert len(f.tags) == MAX_TAGS and f.tags["a"] == "1"
    assert "b" not in f.tags and "litellm_tags" not in f.tags and f.tags_cleaned == 3


def test_config_switches_default_on_and_read_from_yaml() -> None:
    assert parse(None, env={}).attribution == ALL_ON
    got = parse({"attribution": {"portkey": False, "body_user": False}}, env={}).attribution
    assert got == AttributionConfig(portkey=False, body_user=False)
    with pytest.raises(ValueError, match=r"^attribution\.helicone: expected bool, got str$"):
        parse({"attribution": {"helicone": "yes"}}, env={})
    with pytest.raises(ValueError, match=r"^attribution\.langfuse: unknown key"):
        parse({"attribution": {"langfuse": True}}, env={})


def test_the_reference_table_names_every_header_and_family() -> None:
    doc = (ROOT / "docs" / "reference.md").read_text()
    table = doc.split("### Other tools' attribution", 1)[1].split("\n## ", 1)[0].lower()
    for rule in HEADERS:
        assert f"`{rule.header}" in table, rule.header
    for family, prefix in STRIPPED.items():
        assert f"| `{family}` |" in table and prefix in table
