"""Rate limits through the real SDKs: a refusal is a 429 in the caller's SDK's error shape
(`rate_limit_exceeded`) with `Retry-After`, `retry-after-ms` and the rate-limit headers in
that SDK's style, never `x-should-retry`; successful calls carry the remaining figures
(replacing the upstream's own headers of the same name); the row says `rejected`, 429, and
names the limit; a tokens-per-minute limit sees what streamed calls really used."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from proxy.dialects import DIALECTS
from proxy.estimate import Estimator
from tests.conftest import FakeUpstream, Reply, Sdks, StartProxy, sse

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
