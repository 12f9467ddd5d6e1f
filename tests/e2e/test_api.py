"""The HTTP API through real calls: usage totals equal the ledger for every grouping, bad
parameters are a 400 naming the parameter, the live feed during a stream, a call read back
at once. The admin routes' own guards are in tests/test_admin.py."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import aiohttp
import pytest

from proxy import state
from tests.conftest import FakeUpstream, Proxy, Reply, StartProxy

GROUPS = ["agent", "session", "run", "model", "upstream", "operation", "end_user", "client",
          "day", "week", "month", "tag:round", "agent,model"]


async def seed(proxy: Proxy, upstream: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(12):
            model = ["gpt-4o", "gpt-4o-mini", "mystery-1"][i % 3]
            upstream.on("/v1/chat/completions", Reply([json.dumps({
                "model": model, "usage": {"prompt_tokens": 100 + i, "completion_tokens": 10 + i,
                                          "prompt_tokens_details": {"cached_tokens": i}}
            }).encode()]))
            async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                              json={"model": model, "user": f"u{i % 2}"},
                              headers={"X-Meter-Agent": f"agent-{i % 3}",
                                       "X-Meter-Session": f"s-{i % 4}", "X-Meter-Run": "r-1",
                                       "X-Meter-Round": str(i % 2)}) as r:
                await r.read()
    await proxy.collector.wait_for(12)
    await proxy.app[state.LEDGER].flush()


async def get(proxy: Proxy, path: str, **headers: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}{path}", headers=headers) as r:
            return r.status, await r.json()


def ledger_totals(proxy: Proxy) -> dict[str, Any]:
    conn = sqlite3.connect(proxy.config.ledger.path)
    try:
        row = conn.execute(
            "SELECT COUNT(*), SUM(input_tokens), SUM(cache_read_tokens), SUM(output_tokens), "
            "SUM(total_tokens), SUM(cost_usd), SUM(cost_usd IS NULL) FROM llm_usage").fetchone()
    finally:
        conn.close()
    keys = ("calls", "input_tokens", "cache_read_tokens", "output_tokens", "total_tokens",
            "cost_usd", "unpriced_calls")
    return dict(zip(keys, row, strict=True))


@pytest.mark.parametrize("group_by", GROUPS)
async def test_usage_totals_equal_the_ledger(upstream: FakeUpstream, proxy: Proxy,
                                             group_by: str) -> None:
    await seed(proxy, upstream)
    status, body = await get(proxy, f"/api/usage?group_by={group_by}&since=7d")
    assert status == 200
    want = ledger_totals(proxy)
    for key, value in want.items():
        assert body["totals"][key] == pytest.approx(value)
        assert sum(g[key] or 0 for g in body["groups"]) == pytest.approx(value)
    keys = group_by.split(",")
    assert all(set(keys) <= set(g) for g in body["groups"])
    assert body["totals"]["unpriced_calls"] == 4


async def test_usage_filters(upstream: FakeUpstream, proxy: Proxy) -> None:
    await seed(proxy, upstream)
    status, body = await get(proxy, "/api/usage?agent=agent-0&group_by=model")
    assert status == 200 and body["totals"]["calls"] == 4
    assert [g["model"] for g in body["groups"]] == ["gpt-4o"]
    _, calls = await get(proxy, "/api/calls?session=s-1&limit=2")
    assert len(calls["calls"]) == 2 and all(c["session"] == "s-1" for c in calls["calls"])
    one = calls["calls"][0]
    status, row = await get(proxy, f"/api/calls/{one['call_id']}")
    assert status == 200 and row == one and row["tags"]["round"] in ("0", "1")
    status, _ = await get(proxy, "/api/calls/nope")
    assert status == 404


@pytest.mark.parametrize("query,param", [
    ("/api/usage?since=yesterday-ish", "since"), ("/api/usage?until=13/45", "until"),
    ("/api/usage?group_by=planet", "group_by"), ("/api/calls?limit=0", "limit"),
    ("/api/calls?limit=abc", "limit"), ("/api/usage?colour=red", "colour"),
    ("/api/usage?since=999999999d", "since"), ("/api/calls?until=99999999999999999999w", "until"),
    ("/api/usage?since=0001-01-01", "since"), ("/api/usage?since=9999-12-31T23:59:59", "since"),
    ("/api/calls?limit=%C2%B2", "limit"), ("/api/usage?agent=%00", "agent"),
    ("/api/calls/%00", "call_id"),
])
async def test_bad_parameters_are_400_naming_the_parameter(proxy: Proxy, query: str,
                                                           param: str) -> None:
    status, body = await get(proxy, query)
    assert status == 400
    assert body["error"]["param"] == param and param in body["error"]["message"]


async def test_live_feed_progress_then_finished(upstream: FakeUpstream, proxy: Proxy) -> None:
    chunks = [b'data: {"id":"c","model":"gpt-4o","choices":[{"delta":{"content":"tok tok"}}]}'
              b"\n\n"] * 8
    chunks.append(b'data: {"id":"c","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":50,'
                  b'"completion_tokens":16,"total_tokens":66}}\n\ndata: [DONE]\n\n')
    upstream.on("/v1/chat/completions", Reply(chunks, headers={
        "Content-Type": "text/event-stream"}, delay=0.15))
    events: list[tuple[str, Any]] = []

    async def listen(session: aiohttp.ClientSession, ready: asyncio.Event) -> None:
        async with session.get(f"{proxy.url}/api/live") as r:
            name = None
            async for line in r.content:
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    name = text[7:]
                elif text.startswith("data: "):
                    events.append((name or "", json.loads(text[6:])))
                    if name == "snapshot":
                        ready.set()
                    if name == "call_finished":
                        return

    async with aiohttp.ClientSession() as s:
        ready = asyncio.Event()
        listener = asyncio.ensure_future(listen(s, ready))
        await asyncio.wait_for(ready.wait(), 5)
        async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                          json={"model": "gpt-4o", "stream": True,
                                "stream_options": {"include_usage": True}},
                          headers={"X-Meter-Agent": "live"}) as r:
            await r.read()
        await asyncio.wait_for(listener, 5)
    kinds = [k for k, _ in events]
    assert kinds[0] == "snapshot" and kinds[1] == "call_started"
    progress = [d for k, d in events if k == "call_progress"]
    assert len(progress) >= 2
    assert progress[0]["usage_source"] == "estimated" and progress[0]["output_tokens"] > 0
    assert progress[-1]["cost_usd"] is not None and progress[0]["agent"] == "live"
    finished = events[-1][1]
    assert events[-1][0] == "call_finished"
    assert (finished["input_tokens"], finished["output_tokens"]) == (50, 16)
    await proxy.app[state.LEDGER].flush()
    row = (await get(proxy, f"/api/calls/{finished['call_id']}"))[1]
    assert row["cost_usd"] == finished["cost_usd"] and row["call_id"] == finished["call_id"]


async def test_a_call_reads_back_at_once_before_the_ledger_flush(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    """Right after its response, a call is served from the recorder's recent records, as
    the ledger row will read once the (here slow) flush has written it."""
    proxy = await start_proxy(ledger={"flush_seconds": 2.0})
    upstream.on("/v1/chat/completions", Reply([json.dumps({
        "model": "gpt-4o", "usage": {"prompt_tokens": 120, "completion_tokens": 30}
    }).encode()]))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/chat/completions", json={"model": "gpt-4o"},
                          headers={"X-Meter-Agent": "quick"}) as r:
            await r.read()
            call_id = r.headers["X-Meter-Call-Id"]
    status, early = await get(proxy, f"/api/calls/{call_id}")
    assert status == 200, early
    conn = sqlite3.connect(proxy.config.ledger.path)
    try:  # the ledger does not hold it yet: this answer came from the recorder
        assert conn.execute("SELECT COUNT(*) FROM llm_usage WHERE call_id = ?",
                            (call_id,)).fetchone() == (0,)
    finally:
        conn.close()
    # gpt-4o: $2.50 in, $10 out per million: (120 * 2.5 + 30 * 10) / 1e6 = 0.0006
    assert (early["input_tokens"], early["output_tokens"], early["agent"]) == (120, 30, "quick")
    assert early["cost_usd"] == pytest.approx(0.0006)
    await proxy.app[state.LEDGER].flush()
    status, late = await get(proxy, f"/api/calls/{call_id}")
    assert status == 200 and late == early  # the same row, from the ledger now
