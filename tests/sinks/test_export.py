"""Export sinks with real receivers: a webhook that fails for a while still gets every
record exactly once, in order, signed, with the ledger's cost; JSONL rotates; stdout."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy import state
from tests.conftest import FakeUpstream, Proxy, Reply, StartProxy
from tests.e2e.test_ledger_metrics import UNPRICED_JSON, rows
from tests.e2e.test_passthrough import CHAT_JSON

SECRET = "whsec-test"


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 503 to its first `failures` POSTs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.posts = 0
        self.records: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts += 1
        if self.posts <= self.failures:
            return web.Response(status=503)
        mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if request.headers.get("X-Tokenbooth-Signature") != f"sha256={mac}":
            self.bad_signatures += 1
        batch = json.loads(body)
        assert request.headers["Idempotency-Key"] == batch[0]["call_id"]
        self.records.extend(batch)
        self.got.set()
        return web.Response(status=204)

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


async def test_past_the_queue_records_wait_in_a_spool_in_order(upstream: FakeUpstream,
                                                               start_proxy: StartProxy,
                                                               aiohttp_server: Any,
                                                               tmp_path: Path) -> None:
    receiver = Receiver(failures=3)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app)
    proxy = await start_proxy(export=[{"type": "webhook", "url": str(server.make_url("/hook")),
                                       "secret": SECRET, "batch": 4, "queue_records": 5}])
    sink = next(s for s in proxy.app[state.RECORDER].sinks if s.name == "webhook0")
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    await calls(proxy, 30)
    await proxy.collector.wait_for(30)
    await receiver.wait_for(30)
    assert sink.spilled >= 25  # all but the 5 the queue holds went through the spool
    assert sink.dropped == 0 and not sink.spool.exists()
    assert [r["call_id"] for r in receiver.records] == \
        [r.call_id for r in proxy.collector.records]


async def test_records_waiting_at_shutdown_are_delivered_by_the_next_run(
        aiohttp_server: Any, tmp_path: Path) -> None:
    from proxy.config import ExportConfig
    from proxy.sinks.export import make_exports
    from tests.factories import make_record

    down = Receiver(failures=10**6)
    up = Receiver(failures=0)
    apps = []
    for r in (down, up):
        app = web.Application()
        app.router.add_post("/hook", r.handle)
        apps.append(await aiohttp_server(app))
    results: list[tuple[str, str, int]] = []

    def sink_for(url: str) -> Any:
        cfg = ExportConfig("webhook", url=url, secret=SECRET)
        return make_exports((cfg,), lambda *a: results.append(a), tmp_path)[0]

    first = sink_for(str(apps[0].make_url("/hook")))
    for i in range(10):
        await first.handle(make_record(call_id=f"old{i}"))
    await first.aclose()  # the receiver is down: kept in the spool, not dropped
    assert first.spool.exists() and first.dropped == 0
    second = sink_for(str(apps[1].make_url("/hook")))
    await second.handle(make_record(call_id="new"))
    await up.wait_for(11)
    await second.aclose()
    assert [r["call_id"] for r in up.records] == [f"old{i}" for i in range(10)] + ["new"]
    assert not second.spool.exists() and not any(r[1] == "dropped" for r in results)
