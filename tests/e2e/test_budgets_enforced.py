"""Budgets: a blocking budget admits no more than fits, even under concurrency; the 429
parses in both SDKs; alert budgets never block; spend is restored from the ledger."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from proxy import state
from proxy.dialects import DIALECTS
from proxy.estimate import Estimator
from tests.conftest import FakeUpstream, Reply, Sdks, StartProxy
from tests.factories import chat_json

MSGS = [{"role": "user", "content": "Summarise the quarterly report in one line."}]
PRICES = {"models": {"budget-model": {"input": 1.0, "output": 1.0}}}


def worst_case(estimator: Estimator) -> tuple[int, Decimal]:
    est = estimator.input(DIALECTS["openai.chat"], {"messages": MSGS}, "budget-model").tokens
    return est, Decimal(est + 1000) / Decimal(1_000_000)


async def test_fifty_concurrent_against_a_budget_that_fits_ten(
        upstream: FakeUpstream, start_proxy: StartProxy, estimator: Estimator,
        sdk: Sdks) -> None:
    est, worst = worst_case(estimator)
    limit = float(worst * 10 + worst / 2)
    proxy = await start_proxy(pricing=PRICES, budgets=[
        {"name": "bot-cap", "match": {"agent": "bot"}, "limit_usd": limit, "window": "total",
         "action": "block"}])
    upstream.on("/v1/chat/completions", Reply([chat_json("budget-model", {
        "prompt_tokens": est, "completion_tokens": 1000})],
        first_delay=0.3))
    client = sdk.openai(f"{proxy.url}/openai/v1", default_headers={"X-Meter-Agent": "bot"})

    async def one() -> Any:
        try:
            return await client.chat.completions.create(model="budget-model", messages=MSGS,
                                                        max_tokens=1000)
        except openai.RateLimitError as exc:
            return exc

    results = await asyncio.gather(*(one() for _ in range(50)))
    admitted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(admitted) == 10 and len(refused) == 40
    assert len(upstream.requests) == 10
    err = refused[0]
    assert err.status_code == 429 and "bot-cap" in err.message
    assert isinstance(err.body, dict) and err.body["code"] == "budget_exceeded"
    await proxy.collector.wait_for(50)
    _, body = await _get(proxy.url, "/api/budgets")
    (b,) = body["budgets"]
    assert b["spend_usd"] == pytest.approx(float(worst * 10))
    assert b["spend_usd"] <= b["limit_usd"] and b["state"] == "warning"
    assert sum(r.outcome == "rejected" for r in proxy.collector.records) == 40


async def test_anthropic_sdk_gets_its_own_error_shape(upstream: FakeUpstream,
                                                      start_proxy: StartProxy,
                                                      sdk: Sdks) -> None:
    proxy = await start_proxy(budgets=[{"name": "zero", "match": {"upstream": "anthropic"},
                                        "limit_usd": 0.000001, "window": "day",
                                        "action": "block"}],
                              pricing={"models": {"claude-x": {"input": 100, "output": 100}}})
    client = sdk.anthropic(f"{proxy.url}/anthropic")
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(model="claude-x", max_tokens=100, messages=MSGS)
    assert info.value.status_code == 429 and "zero" in info.value.message
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "error"
    assert upstream.requests == []


async def test_alert_budget_never_blocks(upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(pricing=PRICES, budgets=[
        {"name": "watch", "match": {"agent": "bot"}, "limit_usd": 0.000001, "window": "day",
         "action": "alert"}])
    upstream.on("/v1/chat/completions", Reply([json.dumps({
        "model": "budget-model", "usage": {"prompt_tokens": 1000, "completion_tokens": 1000}
    }).encode()]))
    async with aiohttp.ClientSession(headers={"X-Meter-Agent": "bot"}) as s:
        for _ in range(3):
            async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                              json={"model": "budget-model"}) as r:
                assert r.status == 200
    await proxy.collector.wait_for(3)
    _, body = await _get(proxy.url, "/api/budgets")
    assert body["budgets"][0]["state"] == "exceeded"
    assert body["budgets"][0]["spend_usd"] == pytest.approx(0.006)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/metrics") as r:
            text = await r.text()
    assert 'tokenbooth_budget_spend_usd{budget="watch"} 0.006' in text
    assert 'tokenbooth_budget_limit_usd{budget="watch"} 1e-06' in text


async def test_spend_is_restored_from_the_ledger(upstream: FakeUpstream,
                                                 start_proxy: StartProxy) -> None:
    budgets = [{"name": "month", "match": {"agent": "bot"}, "limit_usd": 10, "window": "month",
                "action": "alert"},
               {"name": "tagged", "match": {"team": "red"}, "limit_usd": 10, "window": "week",
                "action": "alert"}]
    proxy = await start_proxy(pricing=PRICES, budgets=budgets)
    upstream.on("/v1/chat/completions", Reply([json.dumps({
        "model": "budget-model", "usage": {"prompt_tokens": 500, "completion_tokens": 500}
    }).encode()]))
    async with aiohttp.ClientSession(headers={"X-Meter-Agent": "bot",
                                              "X-Meter-Team": "red"}) as s:
        for _ in range(4):
            async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                              json={"model": "budget-model"}) as r:
                await r.read()
    await proxy.collector.wait_for(4)
    await proxy.app[state.LEDGER].flush()
    again = await start_proxy(pricing=PRICES, budgets=budgets)
    _, body = await _get(again.url, "/api/budgets")
    assert [b["spend_usd"] for b in body["budgets"]] == [pytest.approx(0.004)] * 2


async def _get(base: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}{path}") as r:
            return r.status, await r.json()


async def test_a_refusal_is_not_retried_and_says_when_to_come_back(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    """The SDKs retry a 429 unless told not to: one refused call is one row, not three."""
    proxy = await start_proxy(budgets=[{"name": "zero", "match": {"upstream": "openai"},
                                        "limit_usd": 0.000001, "window": "day",
                                        "action": "block"}], pricing=PRICES)
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/openai/v1", api_key="sk-x",
                                max_retries=2)
    try:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="budget-model", messages=MSGS,
                                                 max_tokens=1000)
    finally:
        await client.close()
    headers = info.value.response.headers
    assert headers["x-should-retry"] == "false"
    assert 0 < int(headers["Retry-After"]) <= 86_400
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.outcome == "rejected" and rec.status_code == 429
    assert len(proxy.collector.records) == 1 and upstream.requests == []


async def test_gemini_clients_get_the_google_error_shape(upstream: FakeUpstream,
                                                         start_proxy: StartProxy) -> None:
    proxy = await start_proxy(budgets=[{"name": "zero", "match": {"upstream": "gemini"},
                                        "limit_usd": 0.000001, "window": "day",
                                        "action": "block"}],
                              pricing={"models": {"gemini-x": {"input": 100, "output": 100}}})
    async with aiohttp.ClientSession(headers={"x-goog-api-key": "g"}) as s:
        async with s.post(f"{proxy.url}/gemini/v1beta/models/gemini-x:generateContent",
                          json={"contents": [{"parts": [{"text": "hi"}]}],
                                "generationConfig": {"maxOutputTokens": 100}}) as r:
            assert r.status == 429
            body = await r.json()
    assert body["error"]["code"] == 429 and body["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert "zero" in body["error"]["message"]


async def test_a_layered_budget_refuses_on_its_blocking_window_only(
        upstream: FakeUpstream, start_proxy: StartProxy, estimator: Estimator,
        sdk: Sdks) -> None:
    """Day: block at 2 worst cases (and a half); month: alert at 1 worst case. Two calls go
    through (the month window over its limit, refusing nothing); the third is refused by
    the day window, which the 429 names, with Retry-After until midnight UTC."""
    est, worst = worst_case(estimator)
    proxy = await start_proxy(pricing=PRICES, budgets=[
        {"name": "team", "match": {"agent": "bot"}, "windows": [
            {"window": "day", "limit_usd": float(worst * 2 + worst / 2), "action": "block"},
            {"window": "month", "limit_usd": float(worst), "action": "alert"}]}])
    upstream.on("/v1/chat/completions", Reply([chat_json("budget-model", {
        "prompt_tokens": est, "completion_tokens": 1000})]))
    client = sdk.openai(f"{proxy.url}/openai/v1", default_headers={"X-Meter-Agent": "bot"})
    for _ in range(2):
        await client.chat.completions.create(model="budget-model", messages=MSGS,
                                             max_tokens=1000)
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="budget-model", messages=MSGS,
                                             max_tokens=1000)
    assert "'team:day'" in info.value.message
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    retry = int(info.value.response.headers["Retry-After"])
    assert abs(retry - (midnight - now).total_seconds()) <= 3
    await proxy.collector.wait_for(3)
    _, body = await _get(proxy.url, "/api/budgets")
    day, month = body["budgets"]
    assert (day["key"], day["spend_usd"]) == ("team:day", pytest.approx(float(worst * 2)))
    assert (month["key"], month["state"]) == ("team:month", "exceeded")
    assert len(upstream.requests) == 2
