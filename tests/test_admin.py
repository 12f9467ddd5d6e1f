"""Our own routes (proxy/admin.py), through the real app: health and readiness, the admin
token on the API and /metrics, the Host check without a token, the page and its
Content-Security-Policy, and the API's own errors (unknown call, unreadable ledger)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import aiohttp

from proxy import state
from tests.conftest import FakeUpstream, Proxy, Reply, StartProxy

UI = Path(__file__).resolve().parent.parent / "proxy" / "static" / "ui.html"


async def get(proxy: Proxy, path: str, **headers: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}{path}", headers=headers) as r:
            return r.status, await r.json()


async def test_admin_token_protects_api_and_optionally_metrics(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(admin={"token": "t0ken"}, metrics={"require_auth": True})
    assert (await get(proxy, "/api/usage"))[0] == 401
    assert (await get(proxy, "/api/usage", Authorization="Bearer wrong"))[0] == 401
    assert (await get(proxy, "/api/usage", Authorization="Bearer t0ken"))[0] == 200
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/metrics") as r:
            assert r.status == 401
        async with s.get(f"{proxy.url}/metrics", headers={"Authorization": "Bearer t0ken"}) as r:
            assert r.status == 200
        async with s.get(f"{proxy.url}/healthz") as r:
            assert r.status == 200


async def test_favicon_is_no_content_not_a_404(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/favicon.ico") as r:
        assert r.status == 204 and await r.read() == b""
        assert "max-age" in r.headers["Cache-Control"]


async def test_readyz_and_healthz(proxy: Proxy) -> None:
    assert await get(proxy, "/healthz") == (200, {"status": "ok"})
    status, body = await get(proxy, "/readyz")
    assert status == 200 and body["status"] == "ready"
    life = proxy.app[state.LIFECYCLE]
    life.draining = True
    assert await get(proxy, "/readyz") == (503, {"status": "draining"})
    life.draining, life.ready = False, False
    assert await get(proxy, "/readyz") == (503, {"status": "starting"})
    life.ready = True
    assert (await get(proxy, "/readyz"))[0] == 200


async def test_without_a_token_the_api_answers_only_to_local_names(
        start_proxy: StartProxy) -> None:
    """DNS rebinding: a page on evil.example whose name now resolves to this proxy sends
    `Host: evil.example`; without an admin token that is all that tells it apart."""
    proxy = await start_proxy(listen={"host": "meter.lan"})
    port = proxy.server.port
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "meter.lan.x"):
        status, body = await get(proxy, "/api/usage", Host=host)
        assert status == 403, host
        assert body["error"]["type"] == "host_not_allowed"
        assert "admin.token" in body["error"]["message"]
    for host in (f"localhost:{port}", "LOCALHOST.", f"127.0.0.1:{port}", f"[::1]:{port}",
                 "10.1.2.3", f"meter.lan:{port}", "app.localhost"):
        assert (await get(proxy, "/api/usage", Host=host))[0] == 200, host
    async with aiohttp.ClientSession() as s:  # not the API: the health checks answer anyone
        async with s.get(f"{proxy.url}/healthz", headers={"Host": "evil.example"}) as r:
            assert r.status == 200


async def test_with_a_token_any_host_name_may_call_the_api(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(admin={"token": "t0ken"})
    status, _ = await get(proxy, "/api/usage", Host="meter.example.com",
                          Authorization="Bearer t0ken")
    assert status == 200
    assert (await get(proxy, "/api/usage", Host="meter.example.com"))[0] == 401


async def test_an_admin_token_protects_metrics_by_default(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(admin={"token": "t0ken"})
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/metrics") as r:
            assert r.status == 401
        async with s.get(f"{proxy.url}/metrics", headers={"Authorization": "Bearer t0ken"}) as r:
            assert r.status == 200 and "tokenbooth_requests_total" in await r.text()
    opened = await start_proxy(admin={"token": "t0ken"}, metrics={"require_auth": False})
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{opened.url}/metrics") as r:
            assert r.status == 200


async def test_the_root_leads_to_the_page_whose_own_script_alone_may_run(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/ui"
        async with s.get(f"{proxy.url}/ui") as r:
            assert r.status == 200 and r.content_type == "text/html"
            page, csp = await r.read(), r.headers["Content-Security-Policy"]
    assert page == UI.read_bytes()
    scripts = re.findall(rb"<script>(.*?)</script>", page, re.S)
    assert scripts
    hashes = [base64.b64encode(hashlib.sha256(code).digest()).decode() for code in scripts]
    allowed = " ".join(f"'sha256-{h}'" for h in hashes)
    assert f"script-src {allowed};" in csp
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp


async def test_an_unknown_call_is_a_404_naming_it(proxy: Proxy) -> None:
    status, body = await get(proxy, "/api/calls/no-such-call")
    assert status == 404 and body["error"]["type"] == "not_found"
    assert "no-such-call" in body["error"]["message"]


async def test_budgets_lists_the_configured_budgets(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(budgets=[{"name": "daily", "match": {"agent": "ana"},
                                        "limit_usd": 5, "window": "day", "action": "block"}])
    status, body = await get(proxy, "/api/budgets")
    assert status == 200 and [b["name"] for b in body["budgets"]] == ["daily"]


async def test_rate_limits_lists_each_limit_with_its_window(
        start_proxy: StartProxy, upstream: FakeUpstream) -> None:
    proxy = await start_proxy(rate_limits=[{"name": "ana-rpm", "match": {"agent": "ana"},
                                            "requests_per_minute": 5, "usd_per_hour": 2}],
                              pricing={"models": {"ana-model": {"input": 1.0, "output": 2.0}}})
    upstream.on("/v1/chat/completions", Reply([json.dumps({
        "id": "c", "object": "chat.completion", "created": 1, "model": "ana-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5}}).encode()]))
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                              headers={"X-Meter-Agent": "ana"},
                              json={"model": "ana-model", "max_tokens": 50,
                                    "messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status == 200
    await proxy.collector.wait_for(2)  # settled: what the calls used, not what they held
    status, body = await get(proxy, "/api/rate_limits")
    # each call: 10 in at $1/M + 5 out at $2/M = $0.00002; 15 tokens
    assert status == 200 and body == {"rate_limits": [{
        "name": "ana-rpm", "match": {"agent": "ana"}, "requests_per_minute": 5,
        "tokens_per_minute": None, "usd_per_minute": None, "usd_per_hour": 2.0,
        "requests": 2, "tokens": 30, "usd_minute": 0.00004, "usd_hour": 0.00004}]}


async def test_an_unreadable_ledger_is_a_503_not_a_traceback(proxy: Proxy) -> None:
    path = proxy.config.ledger.path
    await proxy.app[state.LEDGER].flush()
    broken = f"{path}.broken"
    Path(broken).write_bytes(b"this is not a database" * 100)
    os.replace(broken, path)  # what a read opens next is no SQLite file
    for query in ("/api/usage", "/api/calls", "/api/calls/x"):
        status, body = await get(proxy, query)
        assert status == 503, query
        assert body["error"]["type"] == "ledger_unavailable"


async def test_the_live_feed_opens_with_a_snapshot_of_the_calls_in_flight(
        proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/api/live") as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            first = await r.content.readuntil(b"\n\n")
    event, data = first.decode().rstrip().split("\n")
    assert event == "event: snapshot" and json.loads(data[len("data: "):]) == {"calls": []}
