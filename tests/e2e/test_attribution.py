"""Other tools' attribution through the proxy with the real SDKs: Helicone, LiteLLM and
Portkey headers (and the bodies' own end user) become the ledger row's tags and end user,
none of those headers reach the upstream, the body reaches it byte for byte, `X-Meter-*`
wins over each family, and a family switched off is neither read nor stripped."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FakeUpstream, Proxy, Reply, Sdks, StartProxy, wait_until
from tests.e2e.test_ledger_metrics import rows as ledger
from tests.e2e.test_passthrough import ANTHROPIC_JSON, CHAT_JSON, CHAT_STREAM, SSE

MSGS = [{"role": "user", "content": "capital of Portugal?"}]
FAMILY_PREFIXES = ("helicone-", "x-litellm-", "x-portkey-", "x-meter-")


async def rows(proxy: Proxy, n: int) -> list[dict[str, Any]]:
    """The ledger file's rows, once the writer has committed `n` of them."""
    await wait_until(lambda: len(ledger(proxy)) >= n, what=f"{n} ledger rows")
    return [{**dict(r), "tags": json.loads(r["tags"])} for r in ledger(proxy)]


def forwarded_family_headers(upstream: FakeUpstream) -> list[tuple[str, str]]:
    return [(k, v) for seen in upstream.requests for k, v in seen.headers.items()
            if k.lower().startswith(FAMILY_PREFIXES)]


async def direct_then_via(upstream: FakeUpstream, proxy: Proxy, sdk: Sdks,
                          headers: dict[str, str], **args: Any) -> bytes:
    """The same SDK call straight to the upstream and through the proxy: the upstream got
    the same body bytes both ways (returned)."""
    await sdk.openai(f"{upstream.url}/v1").chat.completions.create(**args)
    via = sdk.openai(f"{proxy.url}/openai/v1", default_headers=headers)
    await via.chat.completions.create(**args)
    direct_seen, via_seen = upstream.requests[-2:]
    assert via_seen.body == direct_seen.body
    upstream.requests.remove(direct_seen)  # its headers are not the proxy's to strip
    return via_seen.body


async def test_helicone_headers_through_the_openai_sdk(upstream: FakeUpstream, proxy: Proxy,
                                                       sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    body = await direct_then_via(
        upstream, proxy, sdk,
        {"Helicone-Auth": "Bearer sk-helicone-secret", "Helicone-User-Id": "alice",
         "Helicone-Session-Id": "trip-1", "Helicone-Session-Path": "/plan/flights",
         "Helicone-Session-Name": "Trip planner", "Helicone-Property-Team": "travel",
         "Helicone-Property-Cost-Center": "cc-7", "Helicone-Cache-Enabled": "true"},
        model="gpt-4o", messages=MSGS, user="u-body")
    assert json.loads(body)["user"] == "u-body"  # the body's own user still reached it
    (row,) = await rows(proxy, 1)
    assert row["tags"] == {"team": "travel", "cost_center": "cc-7", "session": "trip-1",
                           "session_path": "/plan/flights", "session_name": "Trip planner"}
    assert (row["session"], row["end_user"]) == ("trip-1", "alice")  # Helicone's over the body's
    assert forwarded_family_headers(upstream) == []
    (seen,) = upstream.requests
    assert seen.headers["Authorization"] == "Bearer sk-test-key"  # the provider's key passes
    with sqlite3.connect(proxy.config.ledger.path) as conn:
        dump = "\n".join(conn.iterdump())
    assert "sk-helicone-secret" not in dump


async def test_litellm_header_and_body_tags_through_the_openai_sdk(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    body = await direct_then_via(
        upstream, proxy, sdk,
        {"x-litellm-tags": "prod,team:ml,env=eu", "x-litellm-api-key": "sk-litellm"},
        model="gpt-4o", messages=MSGS, user="u-7",
        extra_body={"metadata": {"tags": ["batch", "team:infra", "job:nightly"]}})
    assert json.loads(body)["metadata"] == {"tags": ["batch", "team:infra", "job:nightly"]}
    (row,) = await rows(proxy, 1)
    # the header's tags first, then the body's where the header named no such key
    assert row["tags"] == {"litellm_tags": "prod,team:ml,env=eu", "team": "ml", "env": "eu",
                           "job": "nightly"}
    assert row["end_user"] == "u-7"
    assert forwarded_family_headers(upstream) == []


async def test_portkey_metadata_and_trace_id_through_the_openai_sdk_streamed(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", Reply(CHAT_STREAM, headers=SSE))
    oa = sdk.openai(f"{proxy.url}/openai/v1", default_headers={"x-portkey-api-key": "pk-1"})
    meta = {"_user": "bob", "environment": "staging", "retries": 2}
    chunks = [c async for c in await oa.chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-portkey-metadata": json.dumps(meta),
                       "x-portkey-trace-id": "trace-42"})]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    (row,) = await rows(proxy, 1)
    assert row["tags"] == {"environment": "staging", "retries": "2", "trace_id": "trace-42"}
    assert row["end_user"] == "bob" and row["output_tokens"] == 3
    assert forwarded_family_headers(upstream) == []


async def test_unreadable_portkey_metadata_is_counted_and_the_call_goes_on(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    done = await oa.chat.completions.create(
        model="gpt-4o", messages=MSGS, user="u-body",
        extra_headers={"x-portkey-metadata": "{team: ml", "x-portkey-trace-id": "t-1"})
    assert done.choices[0].message.content == "Lisbon."
    (row,) = await rows(proxy, 1)
    assert row["outcome"] == "ok" and row["tags"] == {"trace_id": "t-1"}
    assert row["end_user"] == "u-body"
    assert forwarded_family_headers(upstream) == []
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/metrics") as r:
            text = await r.text()
    values = {s.name: s.value for fam in text_string_to_metric_families(text)
              for s in fam.samples}
    assert values["tokenbooth_attribution_unreadable_total"] == 1.0


async def test_the_bodies_own_end_user_openai_and_anthropic(upstream: FakeUpstream,
                                                            proxy: Proxy, sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    upstream.on("/v1/messages", Reply([ANTHROPIC_JSON]))
    await sdk.openai(f"{proxy.url}/openai/v1").chat.completions.create(
        model="gpt-4o", messages=MSGS, user="openai-user-1")
    await sdk.anthropic(f"{proxy.url}/anthropic").messages.create(
        model="claude-sonnet-4-5", max_tokens=10, messages=MSGS,
        metadata={"user_id": "anthropic-user-2"})
    chat, messages = await rows(proxy, 2)
    assert (chat["end_user"], messages["end_user"]) == ("openai-user-1", "anthropic-user-2")
    assert json.loads(upstream.requests[1].body)["metadata"] == {"user_id": "anthropic-user-2"}


FAMILY_HEADERS = {
    "helicone": {"Helicone-Property-Team": "helicone", "Helicone-User-Id": "u-helicone"},
    "litellm": {"x-litellm-tags": "team:litellm"},
    "portkey": {"x-portkey-metadata": json.dumps({"team": "portkey", "_user": "u-portkey"})},
}


@pytest.mark.parametrize("family", sorted(FAMILY_HEADERS))
async def test_x_meter_wins_over_each_family(upstream: FakeUpstream, proxy: Proxy, sdk: Sdks,
                                             family: str) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    oa = sdk.openai(f"{proxy.url}/openai/v1",
                    default_headers={"X-Meter-Team": "meter", "X-Meter-End-User": "u-meter"})
    await oa.chat.completions.create(model="gpt-4o", messages=MSGS, user="u-body",
                                     extra_headers=FAMILY_HEADERS[family])
    (row,) = await rows(proxy, 1)
    assert row["tags"]["team"] == "meter" and row["end_user"] == "u-meter"
    assert forwarded_family_headers(upstream) == []


async def test_a_family_switched_off_is_neither_read_nor_stripped(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Sdks) -> None:
    proxy = await start_proxy(attribution={"helicone": False, "portkey": False,
                                           "body_user": False})
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    sent = {"Helicone-Auth": "Bearer sk-h", "Helicone-Property-Team": "travel",
            "Helicone-User-Id": "alice", "x-portkey-trace-id": "t-1",
            "x-litellm-tags": "env:prod", "X-Meter-Agent": "planner"}
    body = await direct_then_via(upstream, proxy, sdk, sent, model="gpt-4o", messages=MSGS,
                                 user="u-body")
    assert json.loads(body)["user"] == "u-body"
    (row,) = await rows(proxy, 1)
    assert row["tags"] == {"agent": "planner", "litellm_tags": "env:prod", "env": "prod"}
    assert row["end_user"] is None  # neither Helicone's (off) nor the body's (off)
    # the families switched off reach the upstream as sent; LiteLLM's and ours do not
    assert sorted((k.lower(), v) for k, v in forwarded_family_headers(upstream)) == sorted(
        (k.lower(), v) for k, v in sent.items() if k.lower().startswith(("helicone-",
                                                                          "x-portkey-")))
