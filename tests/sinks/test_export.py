"""Export sinks with real receivers: a webhook that fails for a while still gets every
record exactly once, in order, signed, with the ledger's cost, also across a SIGKILL (it
delivers from the ledger); an Idempotency-Key names one batch's exact content; JSONL
rotates; stdout."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy import state
from tests.conftest import FakeUpstream, Proxy, Reply, StartProxy, served, wait_until
from tests.e2e.test_ledger_metrics import UNPRICED_JSON, rows
from tests.e2e.test_passthrough import CHAT_JSON
from tests.sinks.test_ledger import USAGE

SECRET = "whsec-test"


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 503 to its first `failures` POSTs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.posts = 0
        self.records: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.got = asyncio.Event()
        self.seen: list[tuple[str, bytes, int]] = []  # (Idempotency-Key, body, status)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts += 1
        status = 503 if self.posts <= self.failures else 204
        self.seen.append((request.headers["Idempotency-Key"], body, status))
        if status == 503:
            return web.Response(status=503)
        mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if request.headers.get("X-Tokenbooth-Signature") != f"sha256={mac}":
            self.bad_signatures += 1
        self.records.extend(json.loads(body))
        self.got.set()
        return web.Response(status=204)

    def keys_name_one_content(self) -> bool:
        """Every key was sent with one body only, and every body with one key only."""
        bodies: dict[str, bytes] = {}
        keys: dict[bytes, str] = {}
        for key, body, _ in self.seen:
            if bodies.setdefault(key, body) != body or keys.setdefault(body, key) != key:
                return False
        return True

    async def wait_for(self, n: int, timeout: float = 15) -> None:
        async def until() -> None:
            while len(self.records) < n:
                self.got.clear()
                await self.got.wait()
        await asyncio.wait_for(until(), timeout)


async def sent(proxy: Proxy, name: str, n: int) -> None:
    """Until the export sink `name` has delivered n records (bounded: 4 s)."""
    sink = next(s for s in proxy.app[state.RECORDER].sinks if s.name == name)
    for _ in range(200):
        if sink.sent >= n:
            break
        await asyncio.sleep(0.02)
    assert sink.sent == n


async def calls(proxy: Proxy, n: int) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                              json={"model": "gpt-4o", "n": i}) as r:
                await r.read()


async def test_a_webhook_down_for_a_while_loses_nothing(upstream: FakeUpstream,
                                                        start_proxy: StartProxy,
                                                        aiohttp_server: Any) -> None:
    receiver = Receiver(failures=4)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app)
    proxy = await start_proxy(export=[{"type": "webhook", "url": str(server.make_url("/hook")),
                                       "secret": SECRET, "batch": 7}])
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    await calls(proxy, 30)
    upstream.on("/v1/chat/completions", Reply([UNPRICED_JSON]))
    await calls(proxy, 3)
    await proxy.collector.wait_for(33)
    await receiver.wait_for(33)
    await proxy.app[state.LEDGER].flush()
    got = [r["call_id"] for r in receiver.records]
    assert got == [r.call_id for r in proxy.collector.records]  # once each, in order
    assert receiver.posts > 4 and receiver.bad_signatures == 0
    assert receiver.keys_name_one_content()
    ledger = {r["call_id"]: r["cost_usd"] for r in rows(proxy)}
    assert all(r["cost_usd"] == ledger[r["call_id"]] for r in receiver.records)
    unpriced = [r for r in receiver.records if r["model"] == "mystery-7b"]
    assert len(unpriced) == 3 and all(r["cost_usd"] is None for r in unpriced)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/metrics") as m:
            text = await m.text()
    assert 'tokenbooth_export_records_total{result="sent",sink="webhook0"} 33.0' in text


async def test_jsonl_export_appends_and_rotates(upstream: FakeUpstream, start_proxy: StartProxy,
                                                tmp_path: Path) -> None:
    path = tmp_path / "exp" / "calls.jsonl"
    proxy = await start_proxy(export=[{"type": "jsonl", "path": str(path), "max_bytes": 4000,
                                       "keep": 2}])
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    await calls(proxy, 25)
    await proxy.collector.wait_for(25)
    await sent(proxy, "jsonl0", 25)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["calls.jsonl", "calls.jsonl.1", "calls.jsonl.2"]
    assert all(p.stat().st_size <= 4000 for p in path.parent.iterdir())
    lines = [json.loads(line) for name in ("calls.jsonl.2", "calls.jsonl.1", "calls.jsonl")
             for line in (path.parent / name).read_text().splitlines()]
    ids = [r.call_id for r in proxy.collector.records]
    assert [r["call_id"] for r in lines] == ids[len(ids) - len(lines):]  # the newest, in order


async def test_stdout_export(upstream: FakeUpstream, start_proxy: StartProxy,
                             capsys: pytest.CaptureFixture[str]) -> None:
    proxy = await start_proxy(export=[{"type": "stdout"}])
    upstream.on("/v1/chat/completions", Reply([UNPRICED_JSON]))
    await calls(proxy, 2)
    await proxy.collector.wait_for(2)
    await sent(proxy, "stdout0", 2)
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()
           if line.startswith("{")]
    assert [r["call_id"] for r in out] == [r.call_id for r in proxy.collector.records]
    assert all(r["cost_usd"] is None and r["usage_source"] == "reported" for r in out)


def ledger_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT call_id FROM llm_usage ORDER BY id")]
    finally:
        conn.close()


async def test_the_backlog_of_a_killed_proxy_is_delivered_after_restart(
        upstream: FakeUpstream, aiohttp_server: Any, tmp_path: Path) -> None:
    """Calls made while the receiver is down, then SIGKILL: the next run delivers every
    one from the ledger, without a new call to set it going."""
    upstream.on("/v1/chat/completions", Reply([USAGE]))
    receiver = Receiver(failures=10**6)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app)
    db = tmp_path / "k.db"
    config = (f"upstreams: {{openai: {{url: '{upstream.url}'}}}}\n"
              f"ledger: {{path: '{db}', flush_seconds: 0.01}}\n"
              f"export: [{{type: webhook, url: '{server.make_url('/hook')}', "
              f"secret: {SECRET}, batch: 25}}]\n")
    async with served(tmp_path, config) as (proc, port):
        async with aiohttp.ClientSession() as s:
            for i in range(120):
                async with s.post(f"http://127.0.0.1:{port}/openai/v1/chat/completions",
                                  json={"i": i}) as r:
                    assert r.status == 200
        await wait_until(lambda: len(ledger_ids(db)) == 120)
        assert receiver.posts >= 1 and not receiver.records  # refused, so far
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    receiver.failures = 0  # the receiver is back
    async with served(tmp_path, config):
        await receiver.wait_for(120)
    assert [r["call_id"] for r in receiver.records] == ledger_ids(db)  # once each, in order
    assert receiver.bad_signatures == 0 and receiver.keys_name_one_content()


async def test_a_retry_resends_the_same_batch_under_the_same_key(
        upstream: FakeUpstream, start_proxy: StartProxy, aiohttp_server: Any) -> None:
    """The first POST (one record) is answered only after 59 more calls have been made,
    and refused: its retry is that one record again, with its key; the 59 go in batches of
    their own, each under a key of its own."""
    held = asyncio.Event()
    release = asyncio.Event()
    receiver = Receiver(failures=1)

    async def slow_first(request: web.Request) -> web.Response:
        if receiver.posts == 0:
            held.set()
            await release.wait()
        return await receiver.handle(request)

    app = web.Application()
    app.router.add_post("/hook", slow_first)
    server = await aiohttp_server(app)
    proxy = await start_proxy(export=[{"type": "webhook", "url": str(server.make_url("/hook")),
                                       "secret": SECRET, "batch": 60}])
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    await calls(proxy, 1)
    await asyncio.wait_for(held.wait(), 10)
    await calls(proxy, 59)
    await proxy.collector.wait_for(60)
    await proxy.app[state.LEDGER].flush()
    release.set()
    await receiver.wait_for(60)
    (first_key, first_body, status), (retry_key, retry_body, _) = receiver.seen[:2]
    assert status == 503 and len(json.loads(first_body)) == 1
    assert (retry_key, retry_body) == (first_key, first_body)
    assert receiver.keys_name_one_content()
    assert [r["call_id"] for r in receiver.records] == \
        [r.call_id for r in proxy.collector.records]
