"""Budgets on a shared PostgreSQL ledger while the database is away: a blocking budget
keeps counting what this replica admits and spends (it does not fail open), and one with
`on_ledger_down: refuse` refuses matching calls until the database answers."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from proxy import state
from tests.conftest import FakeUpstream, Reply, StartProxy, wait_until
from tests.test_fleet import until

# cap-model: input free, $1.00 per million output tokens. Every call asks max_tokens=1000
# and the provider reports 1000 out: worst case and cost are both 1000 * $1 / 1e6 = $0.001.
PRICES = {"models": {"cap-model": {"input": 0, "output": 1.0}}}
CHAT = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "cap-model",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 1000}}).encode()


async def chat(s: aiohttp.ClientSession, base: str, agent: str = "bot"
               ) -> tuple[int, dict[str, Any]]:
    async with s.post(f"{base}/openai/v1/chat/completions", headers={"X-Meter-Agent": agent},
                      json={"model": "cap-model", "max_tokens": 1000,
                            "messages": [{"role": "user", "content": "hi"}]}) as r:
        return r.status, await r.json()


async def test_a_blocking_budget_keeps_counting_while_postgres_is_away(
        upstream: FakeUpstream, start_proxy: StartProxy, pg_server: Any, pg_url: str) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    # $0.0095 fits 9 calls: 9 * $0.001 = $0.009; a 10th would make $0.010 > $0.0095
    proxy = await start_proxy(
        ledger={"url": pg_url, "flush_seconds": 0.02}, pricing=PRICES,
        budgets=[{"name": "cap", "match": {"agent": "bot"}, "limit_usd": 0.0095,
                  "window": "day", "action": "block"}])
    ledger = proxy.app[state.LEDGER]
    async with aiohttp.ClientSession() as s:
        pg_server.stop()
        try:
            statuses = [(await chat(s, proxy.url))[0] for _ in range(30)]
            assert statuses == [200] * 9 + [429] * 21
            assert len(upstream.requests) == 9
        finally:
            pg_server.start()
        # back: the nine rows are replayed and charged once; the fleet's spend is theirs
        # and the cap still holds
        await proxy.collector.wait_for(30)
        await wait_until(lambda: ledger.stuck_rows == 0)

        async def fleet_spend() -> bool:
            async with s.get(f"{proxy.url}/api/budgets") as r:
                (b,) = (await r.json())["budgets"]
            return abs(b["spend_usd"] - 0.009) < 1e-9
        await until(fleet_spend)
        status, body = await chat(s, proxy.url)
        assert status == 429 and body["error"]["code"] == "budget_exceeded"
    assert len(upstream.requests) == 9


async def test_a_refusing_budget_fails_closed_while_postgres_is_away(
        upstream: FakeUpstream, start_proxy: StartProxy, pg_server: Any, pg_url: str) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    proxy = await start_proxy(
        ledger={"url": pg_url, "flush_seconds": 0.02}, pricing=PRICES,
        budgets=[{"name": "strict", "match": {"agent": "bot"}, "limit_usd": 1,
                  "window": "day", "action": "block", "on_ledger_down": "refuse"},
                 {"name": "lenient", "match": {"agent": "other"}, "limit_usd": 1,
                  "window": "day", "action": "block"}])
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, proxy.url))[0] == 200
        pg_server.stop()
        try:
            status, body = await chat(s, proxy.url)
            assert status == 503
            assert body["error"]["code"] == "budget_unavailable"
            assert body["error"]["budget"] == "strict"
            assert "on_ledger_down: refuse" in body["error"]["message"]
            assert (await chat(s, proxy.url, agent="other"))[0] == 200  # `local` decides
            assert len(upstream.requests) == 2
        finally:
            pg_server.start()

        async def admitted() -> bool:
            return (await chat(s, proxy.url))[0] == 200
        await until(admitted)
    records = await proxy.collector.wait_for(len(upstream.requests) + 1)
    refused = [r for r in records if r.status_code == 503]
    assert refused and all(r.outcome == "rejected" for r in refused)
