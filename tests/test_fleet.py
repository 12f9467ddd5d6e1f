"""Three `tokenbooth serve` processes sharing one PostgreSQL ledger: no row lost or
doubled, a blocking budget holds across replicas under concurrent calls, every replica
reports the same budget spend, and the live feed on one replica shows calls made through
another."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from tests.conftest import FakeUpstream, Reply
from tests.e2e.test_disconnects import served

PRICE = 1.0  # USD per million output tokens; input is free
OUT = 1000
WORST = Decimal(OUT) * Decimal(str(PRICE)) / 1_000_000  # 0.001: max_tokens all out
CHAT = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "fleet-model",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": OUT}}).encode()


def fleet_config(url: str, upstream: str, limit: float | None = None) -> str:
    budgets = "" if limit is None else f"""
budgets:
  - {{name: fleet-cap, match: {{agent: bot}}, limit_usd: {limit}, window: day, action: block}}
  - {{name: fleet-watch, match: {{agent: bot}}, limit_usd: 1000, window: month, action: alert}}
"""
    return f"""
ledger: {{url: "{url}", flush_seconds: 0.05}}
upstreams: {{openai: {{url: "{upstream}"}}}}
pricing: {{models: {{fleet-model: {{input: 0, output: {PRICE}}}}}}}
{budgets}"""


async def start_fleet(stack: AsyncExitStack, tmp_path: Path, config: str,
                      n: int = 3) -> list[str]:
    dirs = [tmp_path / f"replica{i}" for i in range(n)]
    for d in dirs:
        d.mkdir()
    procs = await asyncio.gather(*(stack.enter_async_context(served(d, config))
                                   for d in dirs))
    return [f"http://127.0.0.1:{port}" for _proc, port in procs]


async def chat(s: aiohttp.ClientSession, base: str, agent: str = "bot") -> tuple[int, str]:
    async with s.post(f"{base}/openai/v1/chat/completions",
                      headers={"X-Meter-Agent": agent},
                      json={"model": "fleet-model", "max_tokens": OUT,
                            "messages": [{"role": "user", "content": "hi"}]}) as r:
        await r.read()
        return r.status, r.headers.get("X-Meter-Call-Id", "")


async def until(cond: Any, timeout: float = 15.0) -> Any:
    for _ in range(int(timeout / 0.05)):
        got = await cond()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_rows_from_every_replica_once_each(tmp_path: Path, pg_url: str,
                                                 upstream: FakeUpstream) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    async with AsyncExitStack() as stack:
        bases = await start_fleet(stack, tmp_path, fleet_config(pg_url, upstream.url))
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(chat(s, bases[i % 3], f"a{i % 4}")
                                             for i in range(150)))
        assert all(status == 200 for status, _ in results)
        ids = {cid for _, cid in results}
        db = await asyncpg.connect(pg_url)
        try:
            async def written() -> bool:
                return await db.fetchval("SELECT count(*) FROM llm_usage") >= 150
            await until(written)
            rows = await db.fetch("SELECT call_id FROM llm_usage")
            assert sorted(r[0] for r in rows) == sorted(ids)  # none lost, none twice
            # every replica's report reads the same fleet-wide ledger
            for base in bases:
                async with aiohttp.ClientSession() as s, \
                        s.get(f"{base}/api/usage?group_by=agent") as r:
                    body = await r.json()
                assert body["totals"]["calls"] == 150
                assert body["totals"]["cost_usd"] == float(WORST * 150)
                assert {g["agent"]: g["calls"] for g in body["groups"]} == \
                    {"a0": 38, "a1": 38, "a2": 37, "a3": 37}
        finally:
            await db.close()


async def test_blocking_budget_holds_across_three_replicas(tmp_path: Path, pg_url: str,
                                                           upstream: FakeUpstream) -> None:
    fits = 10
    limit = float(WORST * fits + WORST / 2)
    arrived: list[int] = []
    release = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        arrived.append(1)
        await release.wait()
        return web.Response(body=CHAT, content_type="application/json")

    upstream.on("/v1/chat/completions", held)
    async with AsyncExitStack() as stack:
        bases = await start_fleet(stack, tmp_path, fleet_config(pg_url, upstream.url, limit))
        async with aiohttp.ClientSession() as s:
            tasks = [asyncio.ensure_future(chat(s, bases[i % 3])) for i in range(90)]

            async def settled() -> bool:  # every call is refused or waiting upstream
                return sum(t.done() for t in tasks) + len(arrived) == 90
            await until(settled)
            assert len(arrived) == fits
            release.set()
            results = await asyncio.gather(*tasks)
        statuses = [status for status, _ in results]
        assert statuses.count(200) == fits and statuses.count(429) == 90 - fits

        async def spend_everywhere() -> list[float] | None:
            seen = []
            async with aiohttp.ClientSession() as s:
                for base in bases:
                    async with s.get(f"{base}/api/budgets") as r:
                        b = {x["name"]: x for x in (await r.json())["budgets"]}
                    seen.append(b["fleet-cap"]["spend_usd"])
                    assert b["fleet-watch"]["spend_usd"] == b["fleet-cap"]["spend_usd"]
            return seen if all(x == float(WORST * fits) for x in seen) else None
        # every replica reports the fleet's spend: the same, within the limit
        assert await until(spend_everywhere) == [float(WORST * fits)] * 3
        async with aiohttp.ClientSession() as s:
            for base in bases:
                async with s.get(f"{base}/metrics") as r:
                    text = await r.text()
                assert f'tokenbooth_budget_spend_usd{{budget="fleet-cap"}} {float(WORST * fits)}' \
                    in text
        db = await asyncpg.connect(pg_url)
        try:
            total = await db.fetchval("SELECT sum(cost_usd) FROM llm_usage WHERE agent = 'bot'")
            assert total <= limit
            assert await db.fetchval("SELECT count(*) FROM tb_reservation") == 0
        finally:
            await db.close()


async def test_live_feed_shows_other_replicas_calls(tmp_path: Path, pg_url: str,
                                                    upstream: FakeUpstream) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    async with AsyncExitStack() as stack:
        a, b, _c = await start_fleet(stack, tmp_path, fleet_config(pg_url, upstream.url))
        async with aiohttp.ClientSession() as watch, \
                watch.get(f"{a}/api/live") as feed, aiohttp.ClientSession() as s:
            assert (await feed.content.readline()).startswith(b"event: snapshot")
            finished: set[str] = set()
            made: list[str] = []

            async def read_feed() -> None:
                kind = ""
                async for line in feed.content:
                    if line.startswith(b"event: "):
                        kind = line[7:].strip().decode()
                    elif line.startswith(b"data: ") and kind == "call_finished":
                        finished.add(json.loads(line[6:])["call_id"])

            reader = asyncio.ensure_future(read_feed())
            try:
                async def seen_from_b() -> bool:
                    made.append((await chat(s, b, "remote"))[1])
                    return bool(finished & set(made))
                # B learns within its heartbeat that A has a watcher; then its calls show
                await until(seen_from_b)
            finally:
                reader.cancel()
        assert finished <= set(made)


async def test_one_replica_at_a_time_delivers_a_webhook_every_replicas_rows(
        tmp_path: Path, pg_url: str, upstream: FakeUpstream, aiohttp_server: Any) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    got: list[str] = []
    inflight = [0, 0]  # now, most at once

    async def hook(request: web.Request) -> web.Response:
        inflight[0] += 1
        inflight[1] = max(inflight)
        try:
            body = await request.read()
            got.extend(r["call_id"] for r in json.loads(body))
            return web.Response(status=204)
        finally:
            inflight[0] -= 1

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    config = fleet_config(pg_url, upstream.url) + (
        f"export: [{{type: webhook, url: '{server.make_url('/hook')}', batch: 7}}]\n")
    async with AsyncExitStack() as stack:
        bases = await start_fleet(stack, tmp_path, config)
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(chat(s, bases[i % 3]) for i in range(60)))
        assert all(status == 200 for status, _ in results)

        async def delivered() -> bool:
            return len(set(got)) >= 60
        await until(delivered)
    assert set(got) == {cid for _, cid in results}  # every replica's rows, at least once
    assert len(got) == 60  # and here, with no replica dying, once
    assert inflight[1] == 1  # never two replicas posting at once
