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

from proxy.admin import ANNOUNCE_SECONDS
from tests.conftest import FakeUpstream, Reply, StartProxy, served

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


class Feed:
    """A live-feed subscriber on one replica: every event it got, by kind, as read."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._task = asyncio.ensure_future(self._read(resp))

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        kind = ""
        async for line in resp.content:
            if line.startswith(b"event: "):
                kind = line[7:].strip().decode()
            elif line.startswith(b"data: "):
                self.events.append((kind, json.loads(line[6:])))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.events if k == kind]

    def close(self) -> None:
        self._task.cancel()


async def test_a_new_watcher_sees_the_calls_in_flight_on_other_replicas(
        tmp_path: Path, pg_url: str, upstream: FakeUpstream) -> None:
    arrived: list[str] = []
    release = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        arrived.append((await request.json())["messages"][0]["content"])  # the run
        await release.wait()
        return web.Response(body=CHAT, content_type="application/json")

    upstream.on("/v1/chat/completions", held)
    async with AsyncExitStack() as stack:
        a, b = await start_fleet(stack, tmp_path, fleet_config(pg_url, upstream.url), n=2)
        s = await stack.enter_async_context(aiohttp.ClientSession())
        runs = {f"r-{i}" for i in range(7)}

        async def call(run: str) -> int:
            async with s.post(f"{b}/openai/v1/chat/completions", headers={"X-Meter-Run": run},
                              json={"model": "fleet-model", "max_tokens": OUT,
                                    "messages": [{"role": "user", "content": run}]}) as r:
                await r.read()
                return r.status

        calls = [asyncio.ensure_future(call(run)) for run in sorted(runs)]
        try:
            async def all_in_flight() -> bool:
                return set(arrived) == runs
            await until(all_in_flight)
            # nobody watched anything before: A opens its first feed now
            watch = await stack.enter_async_context(aiohttp.ClientSession())
            feed = Feed(await stack.enter_async_context(watch.get(f"{a}/api/live")))
            try:
                async def shown() -> bool:
                    return {c["run"] for c in feed.of("call_started")} == runs
                await until(shown, timeout=5.0)
                # each with the model its request named, though no response byte came yet
                assert {c["model"] for c in feed.of("call_started")} == {"fleet-model"}
                release.set()

                async def ended() -> bool:
                    return {c["run"] for c in feed.of("call_finished")} == runs
                await until(ended, timeout=5.0)
            finally:
                feed.close()
        finally:
            release.set()
            assert await asyncio.gather(*calls) == [200] * 7


STREAM = [f'data: {{"id":"c","object":"chat.completion.chunk","created":1,"model":"fleet-model",'
          f'"choices":[{{"index":0,"delta":{{"content":"word {i} "}}}}]}}\n\n'.encode()
          for i in range(6)] + [
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"fleet-model",'
    b'"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7}}\n\n', b"data: [DONE]\n\n"]


async def test_the_next_call_on_any_replica_shows_at_once_with_its_running_counts(
        tmp_path: Path, pg_url: str, upstream: FakeUpstream) -> None:
    async with AsyncExitStack() as stack:
        a, b = await start_fleet(stack, tmp_path, fleet_config(pg_url, upstream.url), n=2)
        s = await stack.enter_async_context(aiohttp.ClientSession())
        watch = await stack.enter_async_context(aiohttp.ClientSession())
        resp = await stack.enter_async_context(watch.get(f"{a}/api/live"))
        assert (await resp.content.readline()).startswith(b"event: snapshot")
        feed = Feed(resp)
        try:
            # right after the watcher connects to A, not after some heartbeat: the very
            # next call through B is on A's feed
            upstream.on("/v1/chat/completions", Reply([CHAT]))
            status, first = await chat(s, b)
            assert status == 200

            async def relayed() -> bool:
                return first in {c["call_id"] for c in feed.of("call_finished")}
            await until(relayed, timeout=20.0)
            # a stream on B (a chunk each 0.3 s): its running tokens and cost reach A
            upstream.on("/v1/chat/completions", Reply(STREAM, headers={
                "Content-Type": "text/event-stream"}, delay=0.3))
            status, streamed = await chat(s, b, "streamer")
            assert status == 200
            await until(relayed, timeout=20.0)

            async def finished() -> bool:
                return streamed in {c["call_id"] for c in feed.of("call_finished")}
            await until(finished, timeout=20.0)
            running = [c for c in feed.of("call_progress") if c["call_id"] == streamed]
            assert running, "no running counts from B"
            assert all(c["model"] == "fleet-model" and c["output_tokens"] and
                       c["cost_usd"] is not None for c in running)
        finally:
            feed.close()


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


async def test_a_key_revoked_on_one_replica_is_refused_by_every_replica_within_a_second(
        tmp_path: Path, pg_url: str, upstream: FakeUpstream) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    config = f"""
ledger: {{url: "{pg_url}", flush_seconds: 0.05}}
upstreams: {{openai: {{url: "{upstream.url}", api_key: sk-provider}}}}
auth: {{client_keys: {{legacy: ck-legacy}}}}
pricing: {{models: {{fleet-model: {{input: 0, output: {PRICE}}}}}}}
"""
    async with AsyncExitStack() as stack:
        bases = await start_fleet(stack, tmp_path, config)
        async with aiohttp.ClientSession() as s:
            async def status(base: str, key: str) -> int:
                async with s.post(f"{base}/openai/v1/chat/completions",
                                  headers={"Authorization": f"Bearer {key}"},
                                  json={"model": "fleet-model", "max_tokens": 5,
                                        "messages": [{"role": "user", "content": "hi"}]}) as r:
                    await r.read()
                    return r.status

            async def refused_everywhere(key: str, want: int) -> float:
                """Seconds until every replica answers `want` (polled; bounded)."""
                t0 = asyncio.get_running_loop().time()
                pending = set(bases)
                while pending:
                    got = await asyncio.gather(*(status(b, key) for b in pending))
                    pending = {b for b, st in zip(list(pending), got, strict=True)
                               if st != want}
                    elapsed = asyncio.get_running_loop().time() - t0
                    assert elapsed < 5, f"{sorted(pending)} not {want} after 5 s"
                return asyncio.get_running_loop().time() - t0

            async with s.post(f"{bases[0]}/api/keys", json={"name": "fleet-key"}) as r:
                assert r.status == 201
                made = await r.json()
            assert await refused_everywhere(made["key"], 200) < 1  # a new key: everywhere
            t0 = asyncio.get_running_loop().time()
            async with s.delete(f"{bases[1]}/api/keys/{made['id']}") as r:
                assert r.status == 200
            await refused_everywhere(made["key"], 401)
            assert asyncio.get_running_loop().time() - t0 < 1.0
        db = await asyncpg.connect(pg_url)
        try:
            async def rows() -> Any:
                return await db.fetch("SELECT consumer_key, client, status_code "
                                      "FROM llm_usage WHERE consumer_key IS NOT NULL")
            got = await until(rows)
            assert {(r[0], r[1], r[2]) for r in got} == {(made["id"], "fleet-key", 200)}
        finally:
            await db.close()


async def test_a_new_watchers_snapshot_waits_for_the_fleet_to_know_it_within_a_bound(
        upstream: FakeUpstream, start_proxy: StartProxy, pg_server: Any,
        pg_url: str) -> None:
    """The page's snapshot comes once its watcher's announcement is back from the shared
    ledger (so a call finished on another replica right after is relayed); with the
    ledger away the announcement never comes back, and the snapshot comes after the
    bound, not never."""
    proxy = await start_proxy(ledger={"url": pg_url})
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as s:
        t0 = loop.time()
        async with s.get(f"{proxy.url}/api/live") as r:
            assert (await r.content.readline()).startswith(b"event: snapshot")
        assert loop.time() - t0 < ANNOUNCE_SECONDS  # the echo came back: no wait for the bound
        pg_server.stop()
        try:
            t0 = loop.time()
            async with s.get(f"{proxy.url}/api/live") as r:
                assert (await asyncio.wait_for(r.content.readline(), 30)).startswith(
                    b"event: snapshot")
            assert loop.time() - t0 >= ANNOUNCE_SECONDS * 0.9  # it waited, then showed
        finally:
            pg_server.start()
