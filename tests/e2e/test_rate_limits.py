"""Rate limits through the real SDKs: a refusal is a 429 in the caller's SDK's error shape
(`rate_limit_exceeded`) with `Retry-After`, `retry-after-ms` and the rate-limit headers in
that SDK's style, no `x-should-retry` (but `false` for a call that can never fit, which the
SDK then does not retry); successful calls carry the remaining figures
(replacing the upstream's own headers of the same name); the row says `rejected`, 429, and
names the limit; a tokens-per-minute limit sees what streamed calls really used."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import asyncpg
import openai
import pytest
from aiohttp import web

from proxy.dialects import DIALECTS
from proxy.estimate import Estimator
from tests.conftest import FakeUpstream, Reply, Sdks, StartProxy, sse
from tests.test_fleet import start_fleet, until

MSGS = [{"role": "user", "content": "Summarise the quarterly report in one line."}]
CHAT = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "rate-model",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 3}}).encode()
# the upstream's own rate-limit headers: ours replace them when a limit applies
UPSTREAM_HEADERS = {"Content-Type": "application/json", "x-ratelimit-limit-requests": "10000",
                    "x-ratelimit-remaining-requests": "9999", "x-request-id": "req-1"}


def stream(prompt: int, completion: int) -> list[bytes]:
    return sse(*[f'data: {{"id":"c","object":"chat.completion.chunk","created":1,'
                 f'"model":"rate-model","choices":[{{"index":0,"delta":{{"content":"w{i} "}}}}]}}'
                 for i in range(3)],
               f'data: {{"id":"c","object":"chat.completion.chunk","created":1,'
               f'"model":"rate-model","choices":[],"usage":{{"prompt_tokens":{prompt},'
               f'"completion_tokens":{completion}}}}}', "data: [DONE]")


async def test_openai_sdk_gets_429_with_its_headers_and_successes_carry_the_rest(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Sdks) -> None:
    proxy = await start_proxy(rate_limits=[{"name": "bot-rpm", "match": {"agent": "bot"},
                                            "requests_per_minute": 2}])
    upstream.on("/v1/chat/completions", Reply([CHAT], headers=UPSTREAM_HEADERS))
    client = sdk.openai(f"{proxy.url}/openai/v1", default_headers={"X-Meter-Agent": "bot"})
    for left in (1, 0):
        raw = await client.chat.completions.with_raw_response.create(
            model="rate-model", messages=MSGS, max_tokens=50)
        h = raw.headers
        assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"],
                h["x-ratelimit-reset-requests"]) == ("2", str(left), "1m0s")
        assert h["x-request-id"] == "req-1"  # the upstream's other headers pass
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="rate-model", messages=MSGS, max_tokens=50)
    err = info.value
    assert err.status_code == 429 and "bot-rpm" in err.message
    assert isinstance(err.body, dict)
    assert err.body["type"] == err.body["code"] == "rate_limit_exceeded"
    assert err.body["rate_limit"] == "bot-rpm"
    h = err.response.headers
    assert "x-should-retry" not in h  # a rate limit's refusal may be retried
    retry_ms = int(h["retry-after-ms"])
    assert 0 < retry_ms <= 60_000 and int(h["Retry-After"]) == -(-retry_ms // 1000)
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("2", "0")
    assert h["X-Meter-Rate-Limit"] == "bot-rpm"
    assert len(upstream.requests) == 2
    records = await proxy.collector.wait_for(3)
    (refused,) = [r for r in records if r.outcome == "rejected"]
    assert (refused.status_code, refused.error) == (429, "rate limit bot-rpm exceeded")
    # a call no limit matches carries no Tokenbooth figures: the upstream's own pass
    other = sdk.openai(f"{proxy.url}/openai/v1", default_headers={"X-Meter-Agent": "other"})
    raw = await other.chat.completions.with_raw_response.create(
        model="rate-model", messages=MSGS, max_tokens=50)
    assert raw.headers["x-ratelimit-limit-requests"] == "10000"


async def test_a_call_that_can_never_fit_is_not_retried_by_the_openai_sdk(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    """100 tokens a minute; the call reserves its input estimate plus max_tokens 1000: more
    than the whole window, so waiting cannot help. The 429 says `x-should-retry: false` and
    the SDK (two retries allowed, `Retry-After: 60` within its 120 s) does not retry: one
    refused row, nothing upstream, at once."""
    proxy = await start_proxy(rate_limits=[{"name": "tiny-tpm", "match": {"agent": "bot"},
                                            "tokens_per_minute": 100}])
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/openai/v1", api_key="sk-test-key",
                                max_retries=2, default_headers={"X-Meter-Agent": "bot"})
    try:
        with pytest.raises(openai.RateLimitError) as info:
            # a retry would wait 60 s first: bounded well below that
            await asyncio.wait_for(client.chat.completions.create(
                model="rate-model", messages=MSGS, max_tokens=1000), 10)
    finally:
        await client.close()
    h = info.value.response.headers
    assert h["x-should-retry"] == "false" and h["Retry-After"] == "60"
    assert "can never admit this request" in info.value.message
    assert "a retry as it is cannot succeed" in info.value.message
    records = await proxy.collector.wait_for(1)
    assert [(r.outcome, r.status_code) for r in records] == [("rejected", 429)]
    assert upstream.requests == []


async def test_anthropic_sdk_gets_its_own_shape_and_header_names(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Sdks) -> None:
    proxy = await start_proxy(rate_limits=[{"name": "claude-rpm",
                                            "match": {"upstream": "anthropic"},
                                            "requests_per_minute": 1}])
    upstream.on("/v1/messages", Reply([json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": 2}}).encode()]))
    client = sdk.anthropic(f"{proxy.url}/anthropic")
    raw = await client.messages.with_raw_response.create(model="claude-x", max_tokens=100,
                                                         messages=MSGS)
    assert raw.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert raw.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert raw.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(model="claude-x", max_tokens=100, messages=MSGS)
    err = info.value
    assert err.status_code == 429 and "claude-rpm" in err.message
    assert isinstance(err.body, dict) and err.body["type"] == "error"
    assert err.body["error"]["type"] == "rate_limit_error"  # Anthropic's own 429 type
    h = err.response.headers
    assert "x-should-retry" not in h and "x-ratelimit-limit-requests" not in h
    assert h["anthropic-ratelimit-requests-remaining"] == "0"
    assert 1 <= int(h["retry-after"]) <= 60 and int(h["retry-after-ms"]) <= 60_000


async def test_tokens_per_minute_sees_what_streamed_calls_really_used(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Sdks,
        estimator: Estimator) -> None:
    est = estimator.input(DIALECTS["openai.chat"], {"messages": MSGS}, "rate-model").tokens
    reserve = est + 1000  # input estimate plus max_tokens
    limit = 2 * reserve
    proxy = await start_proxy(rate_limits=[{"name": "bot-tpm", "match": {"agent": "bot"},
                                            "tokens_per_minute": limit}])
    ct = {"Content-Type": "text/event-stream"}
    client = sdk.openai(f"{proxy.url}/openai/v1", default_headers={"X-Meter-Agent": "bot"})

    async def streamed() -> None:
        got = await client.chat.completions.create(model="rate-model", messages=MSGS,
                                                   stream=True, max_tokens=1000)
        async for _ in got:
            pass

    upstream.on("/v1/chat/completions", Reply(stream(12, 30), headers=ct))

    # two streams reserve 2 * reserve (the whole limit) but use 42 tokens each
    await streamed()
    await streamed()
    await proxy.collector.wait_for(2)
    # were the reservations not settled, a third would not fit: it does (84 + reserve)
    await streamed()
    await proxy.collector.wait_for(3)
    # the fourth asks for 1 token out and uses 1500: more than it reserved
    upstream.on("/v1/chat/completions", Reply(stream(12, 1500), headers=ct))
    raw = await client.chat.completions.with_raw_response.create(
        model="rate-model", messages=MSGS, max_tokens=1, stream=True)
    # the headers' figure is the settled one: 3 * 42 used, plus this call's est + 1
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == limit - 3 * 42 - (est + 1)
    async for _ in raw.parse():
        pass
    records = await proxy.collector.wait_for(4)
    assert [r.total_tokens for r in records] == [42, 42, 42, 1512]
    # it reserved est + 1 and used 1512: later admissions see 1512, so what is left is
    # limit - 3 * 42 - 1512, and a call reserving one token more is refused
    left = limit - 3 * 42 - 1512
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="rate-model", messages=MSGS,
                                             max_tokens=left - est + 1)
    assert "tokens per minute" in info.value.message
    await client.chat.completions.create(model="rate-model", messages=MSGS,
                                         max_tokens=left - est)  # exactly what is left
    assert len(upstream.requests) == 5


def arrivals(arrived: list[float]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An upstream answering CHAT that notes when each call reached it."""

    async def answer(request: web.Request) -> web.Response:
        arrived.append(time.monotonic())
        await request.read()
        return web.Response(body=CHAT, content_type="application/json")

    return answer


def fleet_config(url: str, upstream: str, limits: str) -> str:
    # a blocking budget matches too, far from its limit: the rate limit and the budget are
    # decided in one round trip (`tb_admit`)
    return f"""
ledger: {{url: "{url}", flush_seconds: 0.05}}
upstreams: {{openai: {{url: "{upstream}"}}}}
pricing: {{models: {{rate-model: {{input: 0, output: 1.0}}}}}}
budgets:
  - {{name: roomy, match: {{agent: bot}}, limit_usd: 1000, window: day, action: block}}
rate_limits:
{limits}
"""


async def test_two_hundred_calls_across_three_replicas_then_the_sdk_retries_them(
        tmp_path: Path, pg_url: str, upstream: FakeUpstream, sdk: Sdks) -> None:
    """200 concurrent calls on one limit of 100 requests a minute across three replicas:
    exactly 100 forwarded, 100 refused with a Retry-After within the window; the openai SDK
    then sends them again, waits as told, and every one succeeds once the window has
    moved on (never more than 100 in any minute)."""
    arrived: list[float] = []
    upstream.on("/v1/chat/completions", arrivals(arrived))
    limits = "  - {name: fleet-rpm, match: {agent: bot}, requests_per_minute: 100}"
    async with AsyncExitStack() as stack:
        bases = await start_fleet(stack, tmp_path, fleet_config(pg_url, upstream.url, limits))
        body = {"model": "rate-model", "max_tokens": 10, "messages": MSGS}

        async def one(s: aiohttp.ClientSession, base: str) -> tuple[int, Any]:
            async with s.post(f"{base}/openai/v1/chat/completions", json=body,
                              headers={"X-Meter-Agent": "bot"}) as r:
                await r.read()
                return r.status, r.headers

        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(one(s, bases[i % 3]) for i in range(200)))
        statuses = [status for status, _ in results]
        assert statuses.count(200) == 100 and statuses.count(429) == 100
        assert len(arrived) == 100  # counted at the upstream: none over-admitted
        for status, h in results:
            if status == 429:
                assert "x-should-retry" not in h
                assert 1 <= int(h["Retry-After"]) <= 60
                assert 1 <= int(h["retry-after-ms"]) <= 60_000
                assert h["x-ratelimit-limit-requests"] == "100"
                assert h["x-ratelimit-remaining-requests"] == "0"
        first = min(arrived)
        # the SDK, told to retry, waits as Retry-After says until the window has room
        clients = [sdk.openai(f"{b}/openai/v1", default_headers={"X-Meter-Agent": "bot"})
                   .with_options(max_retries=100) for b in bases]
        done = await asyncio.gather(*(
            clients[i % 3].chat.completions.create(model="rate-model", messages=MSGS,
                                                   max_tokens=10) for i in range(100)))
        assert len(done) == 100 and len(arrived) == 200
        # none of the second hundred went out before the first had left the window (the
        # upstream sees them a few milliseconds after admission: that much slack)
        assert min(arrived[100:]) >= first + 60 - 0.25
        db = await asyncpg.connect(pg_url)
        try:
            async def written() -> bool:
                return await db.fetchval("SELECT count(*) FROM llm_usage "
                                         "WHERE outcome = 'ok'") == 200
            await until(written)
            # every refusal is a row naming the limit
            assert await db.fetchval(
                "SELECT count(*) FROM llm_usage WHERE outcome = 'rejected' AND "
                "status_code = 429 AND error = 'rate limit fleet-rpm exceeded'") >= 100
        finally:
            await db.close()


async def test_one_consumer_keys_own_limit_holds_across_three_replicas(
        tmp_path: Path, pg_url: str, upstream: FakeUpstream, sdk: Sdks) -> None:
    """A consumer key with its own `requests_per_minute: 20` (the limit `key:<id>`, decided
    by `tb_admit` with the budget it also meets): 40 concurrent calls with it through the
    openai SDK (no retries) spread over three replicas: exactly 20 reach the upstream, 20
    are refused with a Retry-After within the minute, each a row naming the limit."""
    arrived: list[float] = []
    upstream.on("/v1/chat/completions", arrivals(arrived))
    config = f"""
ledger: {{url: "{pg_url}", flush_seconds: 0.05}}
upstreams: {{openai: {{url: "{upstream.url}", api_key: sk-provider}}}}
pricing: {{models: {{rate-model: {{input: 0, output: 1.0}}}}}}
budgets:
  - {{name: roomy, match: {{agent: bot}}, limit_usd: 1000, window: day, action: block}}
"""
    async with AsyncExitStack() as stack:
        bases = await start_fleet(stack, tmp_path, config)
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{bases[0]}/api/keys", json={
                    "name": "burst", "limits": {"requests_per_minute": 20}}) as r:
                assert r.status == 201
                made = await r.json()

            async def known_everywhere() -> bool:
                for base in bases:
                    async with s.get(f"{base}/api/me",
                                     headers={"Authorization": f"Bearer {made['key']}"}) as r:
                        if r.status != 200:
                            return False
                return True
            await until(known_everywhere)
        clients = [sdk.openai(f"{b}/openai/v1", api_key=made["key"],
                              default_headers={"X-Meter-Agent": "bot"}) for b in bases]
        results = await asyncio.gather(*(
            clients[i % 3].chat.completions.create(model="rate-model", messages=MSGS,
                                                   max_tokens=10) for i in range(40)),
            return_exceptions=True)
        refused = [r for r in results if isinstance(r, openai.RateLimitError)]
        assert len(refused) == 20 and len(results) - len(refused) == 20
        assert not [r for r in results if isinstance(r, BaseException)
                    and not isinstance(r, openai.RateLimitError)]
        assert len(arrived) == 20  # counted at the upstream: none over-admitted
        limit = f"key:{made['id']}"
        for err in refused:
            h = err.response.headers
            assert h["X-Meter-Rate-Limit"] == limit and "x-should-retry" not in h
            assert 1 <= int(h["Retry-After"]) <= 60
            assert h["x-ratelimit-limit-requests"] == "20"
            assert h["x-ratelimit-remaining-requests"] == "0"
        db = await asyncpg.connect(pg_url)
        try:
            async def written() -> bool:
                return await db.fetchval("SELECT count(*) FROM llm_usage WHERE consumer_key = $1",
                                         made["id"]) == 40
            await until(written)
            assert await db.fetchval(
                "SELECT count(*) FROM llm_usage WHERE outcome = 'rejected' AND "
                "status_code = 429 AND error = $1", f"rate limit {limit} exceeded") == 20
        finally:
            await db.close()


async def test_a_fleets_tokens_per_minute_sees_what_streamed_calls_used(
        tmp_path: Path, pg_url: str, upstream: FakeUpstream, estimator: Estimator) -> None:
    est = estimator.input(DIALECTS["openai.chat"], {"messages": MSGS}, "rate-model").tokens
    reserve = est + 1000
    limits = f"  - {{name: fleet-tpm, match: {{agent: bot}}, tokens_per_minute: {2 * reserve}}}"
    upstream.on("/v1/chat/completions", Reply(stream(12, 30),
                                              headers={"Content-Type": "text/event-stream"}))
    async with AsyncExitStack() as stack:
        a, b = await start_fleet(stack, tmp_path, fleet_config(pg_url, upstream.url, limits),
                                 n=2)
        body = {"model": "rate-model", "max_tokens": 1000, "messages": MSGS, "stream": True}
        db = await asyncpg.connect(pg_url)
        stack.push_async_callback(db.close)
        async with aiohttp.ClientSession() as s:
            async def post(base: str) -> int:
                async with s.post(f"{base}/openai/v1/chat/completions", json=body,
                                  headers={"X-Meter-Agent": "bot"}) as r:
                    await r.read()
                    return r.status

            # two streams on two replicas hold the whole limit while they run...
            assert [await post(a), await post(b)] == [200, 200]

            async def settled() -> bool:  # ...and their rows settle them to 42 tokens each
                return await db.fetchval("SELECT coalesce(sum(tokens), 0) FROM "
                                         "tb_rate_event") == 84
            await until(settled)
            # the fleet's figure is the settled one: 84 + reserve fits in 2 * reserve
            assert await post(a) == 200
            assert len(upstream.requests) == 3
