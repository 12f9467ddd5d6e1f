"""Provider quota end to end: the real anthropic and openai SDKs through the proxy to a fake
upstream that sends the providers' quota headers. The rows keep them, /metrics and
/api/quota show each account's latest reading, and `report --quota` splits the 5-hour
window between sessions, by hand."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp import web

from proxy import state
from proxy.cli import main
from tests.conftest import FakeUpstream, Proxy, Reply, Sdks
from tests.e2e.test_ledger_metrics import rows
from tests.e2e.test_passthrough import ANTHROPIC_JSON, CHAT_JSON
from tests.sinks.test_metrics import samples, scrape

RESET_5H = int(time.time()) // 3600 * 3600 + 3 * 3600  # the window ends on the hour
RESET_7D = RESET_5H + 4 * 86400


def unified(u5: float, u7: float, status: str = "allowed") -> dict[str, str]:
    """A Claude subscription's response headers (as Claude Code receives them)."""
    return {
        "Content-Type": "application/json", "request-id": "req_011",
        "anthropic-organization-id": "org-0f8e",
        "anthropic-ratelimit-unified-5h-utilization": str(u5),
        "anthropic-ratelimit-unified-5h-reset": str(RESET_5H),
        "anthropic-ratelimit-unified-5h-status": status,
        "anthropic-ratelimit-unified-7d-utilization": str(u7),
        "anthropic-ratelimit-unified-7d-reset": str(RESET_7D),
        "anthropic-ratelimit-unified-7d-status": "allowed",
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-reset": str(RESET_5H),
        "anthropic-ratelimit-unified-status": status,
    }


def scripted(readings: list[dict[str, str]], body: bytes = ANTHROPIC_JSON, status: int = 200
             ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Each call gets the next response head in `readings`."""
    left = list(readings)

    async def reply(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, status=status, headers=left.pop(0))
    return reply


def claude_code(sdk: Sdks, proxy: Proxy, session: str, token: str) -> anthropic.AsyncAnthropic:
    """Claude Code on a subscription: an OAuth bearer token, its session id header."""
    client: anthropic.AsyncAnthropic = sdk.anthropic(
        f"{proxy.url}/anthropic", api_key=None, auth_token=token,
        default_headers={"X-Claude-Code-Session-Id": session})
    return client


MSGS: Any = [{"role": "user", "content": "fix the test"}]


async def test_a_subscriptions_windows_on_rows_gauges_api_and_each_sessions_share(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Two Claude Code sessions on one account, in this order, each response reporting the
    # 5-hour utilization before its own call counts:
    #   s-a 0.10, s-b 0.14, s-a 0.15, s-a 0.21, s-b 0.30
    heads = [unified(u5, u7) for u5, u7 in ((0.10, 0.50), (0.14, 0.51), (0.15, 0.51),
                                            (0.21, 0.52), (0.30, 0.53))]
    upstream.on("/v1/messages", scripted(heads))
    a = claude_code(sdk, proxy, "s-a", "sk-ant-oat01-account-one")
    b = claude_code(sdk, proxy, "s-b", "sk-ant-oat01-account-one")
    for client in (a, b, a, a, b):
        msg = await client.messages.create(model="claude-sonnet-4-20250514", max_tokens=200,
                                           messages=MSGS)
        assert msg.content[0].text == "Done."  # type: ignore[union-attr]
    await proxy.collector.wait_for(5)
    await proxy.app[state.LEDGER].flush()
    got = rows(proxy)
    assert [r["session"] for r in got] == ["s-a", "s-b", "s-a", "s-a", "s-b"]
    # every anthropic-ratelimit-* header as sent, names lowercased; nothing else
    for row, head in zip(got, heads, strict=True):
        assert json.loads(row["quota"]) == {k: v for k, v in head.items()
                                            if k.startswith("anthropic-ratelimit-")}
    (account,) = {r["key_id"] for r in got}
    assert account.startswith("k_")

    # the gauge: the account's latest reading, per window
    text = await scrape(proxy)
    gauge = samples(text, "tokenbooth_provider_quota_utilization")
    assert gauge == {
        (("account", account), ("upstream", "anthropic"), ("window", "5h")): 0.30,
        (("account", account), ("upstream", "anthropic"), ("window", "7d")): 0.53,
    }
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/api/quota") as r:
        assert r.status == 200
        (acct,) = (await r.json())["accounts"]
    assert (acct["upstream"], acct["account"], acct["status"]) == ("anthropic", account,
                                                                   "allowed")
    assert [(w["name"], w["utilization"], w["resets_at"], w["status"])
            for w in acct["windows"]] == [("5h", 0.30, RESET_5H, "allowed"),
                                          ("7d", 0.53, RESET_7D, "allowed")]

    # each session's share of the 5-hour window: a call's share is the rise from its own
    # reading to the account's next one
    #   s-a: (0.14 - 0.10) + (0.21 - 0.15) + (0.30 - 0.21) = 0.19, 3 calls, all measured
    #   s-b: (0.15 - 0.14) = 0.01; its second call is the window's latest: not measured yet
    db = proxy.config.ledger.path
    assert main(["report", "--quota", "--db", db, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["window"] == "5h"
    shares = {r["session"]: r for r in doc["rows"]}
    assert shares["s-a"]["share"] == pytest.approx(0.19)
    assert (shares["s-a"]["calls"], shares["s-a"]["measured_calls"]) == (3, 3)
    assert (shares["s-a"]["before"], shares["s-a"]["after"]) == (0.10, 0.30)
    assert shares["s-b"]["share"] == pytest.approx(0.01)
    assert (shares["s-b"]["calls"], shares["s-b"]["measured_calls"]) == (2, 1)
    assert {(r["account"], r["upstream"], r["resets_at"]) for r in doc["rows"]} == {
        (account, "anthropic", RESET_5H)}
    (window,) = doc["windows"]
    assert (window["first"], window["last"], window["calls"]) == (0.10, 0.30, 5)
    assert window["share"] == pytest.approx(0.20) == shares["s-a"]["share"] + \
        shares["s-b"]["share"]
    # one session's lines only; the arithmetic still counts every call of the account
    assert main(["report", "--quota", "--db", db, "--session", "s-b", "--format", "json"]) == 0
    (only,) = json.loads(capsys.readouterr().out)["rows"]
    assert only["session"] == "s-b" and only["share"] == pytest.approx(0.01)
    assert main(["report", "--quota", "--db", db]) == 0
    table = capsys.readouterr().out
    lines = {line.split()[3]: line.split() for line in table.splitlines()[2:5]}
    assert lines["s-a"][4:] == ["3", "3", "19.0%", "10.0%", "30.0%"]
    assert lines["s-b"][4:] == ["2", "1", "1.0%", "14.0%", "15.0%"]
    assert lines["TOTAL"][4:] == ["5", "-", "20.0%", "10.0%", "30.0%"]


async def test_a_refusal_at_the_limit_and_an_openai_accounts_limits(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    # the 5-hour window is spent: Anthropic answers 429 with the window rejected
    refusal = json.dumps({"type": "error", "error": {
        "type": "rate_limit_error", "message": "usage limit reached"}}).encode()
    upstream.on("/v1/messages", scripted([unified(1.0, 0.7, "rejected")], refusal, 429))
    client = claude_code(sdk, proxy, "s-x", "sk-ant-oat01-account-two")
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(model="claude-sonnet-4-20250514", max_tokens=10,
                                     messages=MSGS)
    # an OpenAI key's per-minute limits
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON], headers={
        "Content-Type": "application/json", "x-request-id": "req_1",
        "x-ratelimit-limit-requests": "5000", "x-ratelimit-remaining-requests": "4990",
        "x-ratelimit-reset-requests": "120ms", "x-ratelimit-limit-tokens": "800000",
        "x-ratelimit-remaining-tokens": "600000", "x-ratelimit-reset-tokens": "15s"}))
    oa = sdk.openai(f"{proxy.url}/openai/v1", api_key="sk-proj-openai-key")
    await oa.chat.completions.create(model="gpt-4o", messages=MSGS)
    await proxy.collector.wait_for(2)
    await proxy.app[state.LEDGER].flush()
    refused, chat = rows(proxy)
    assert (refused["status_code"], refused["outcome"]) == (429, "upstream_error")
    assert json.loads(refused["quota"])["anthropic-ratelimit-unified-5h-status"] == "rejected"
    assert json.loads(chat["quota"]) == {
        "x-ratelimit-limit-requests": "5000", "x-ratelimit-remaining-requests": "4990",
        "x-ratelimit-reset-requests": "120ms", "x-ratelimit-limit-tokens": "800000",
        "x-ratelimit-remaining-tokens": "600000", "x-ratelimit-reset-tokens": "15s"}
    gauge = samples(await scrape(proxy), "tokenbooth_provider_quota_utilization")
    key_a, key_o = refused["key_id"], chat["key_id"]
    assert key_a != key_o
    # 1 - 4990/5000 = 0.002 of the requests, 1 - 600000/800000 = 0.25 of the tokens
    assert gauge == {
        (("account", key_a), ("upstream", "anthropic"), ("window", "5h")): 1.0,
        (("account", key_a), ("upstream", "anthropic"), ("window", "7d")): 0.7,
        (("account", key_o), ("upstream", "openai"), ("window", "requests")):
            pytest.approx(1 - 4990 / 5000),
        (("account", key_o), ("upstream", "openai"), ("window", "tokens")): 0.25,
    }
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/api/calls/"
                                                   f"{chat['call_id']}") as r:
        assert (await r.json())["quota"]["x-ratelimit-remaining-tokens"] == "600000"


async def test_a_response_without_quota_headers_keeps_none(upstream: FakeUpstream,
                                                          proxy: Proxy, sdk: Sdks) -> None:
    upstream.on("/v1/messages", Reply([ANTHROPIC_JSON]))
    await sdk.anthropic(f"{proxy.url}/anthropic").messages.create(
        model="claude-sonnet-4-20250514", max_tokens=10, messages=MSGS)
    await proxy.collector.wait_for(1)
    await proxy.app[state.LEDGER].flush()
    (row,) = rows(proxy)
    assert row["quota"] is None and proxy.collector.records[0].quota is None
    assert samples(await scrape(proxy), "tokenbooth_provider_quota_utilization") == {}
