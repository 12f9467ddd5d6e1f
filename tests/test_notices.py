"""Budget notices reach people: each threshold crossed, and a forecast that a window runs
out before it ends, is POSTed once to the budget's notification sinks (a real receiver on
127.0.0.1 checks the signature by hand), not again after a restart on the same ledger nor
from another replica of a PostgreSQL fleet, and not lost while the receiver is down."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import signal
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from proxy import state
from proxy.backends import open_backend
from tests.conftest import FakeUpstream, Reply, StartProxy, served, wait_until

SECRET = "whsec-notices"
# cap-model: input free, $1.00 per million output tokens; each call answers 1000 output
# tokens: 1000 * $1 / 1e6 = $0.001 a call.
PRICES = {"models": {"cap-model": {"input": 0, "output": 1.0}}}
CHAT = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "cap-model",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 1000}}).encode()


class Receiver:
    """A webhook receiver: checks `X-Tokenbooth-Signature` (HMAC-SHA256 of the body with
    the shared secret, computed here), answers 503 `fail` times, then takes each POST."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, Any], str]] = []  # path, body, idempotency key
        self.posts = 0
        self.bad_signatures = 0
        self.fail = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts += 1
        mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if request.headers.get("X-Tokenbooth-Signature") != f"sha256={mac}":
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=503)
        self.got.append((request.path, json.loads(body),
                         request.headers.get("Idempotency-Key", "")))
        return web.Response(status=204)


async def receiver(aiohttp_server: Any) -> tuple[Receiver, str]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/{hook}", r.handle)
    server = await aiohttp_server(app)
    return r, str(server.make_url("")).rstrip("/")


def sinks(url: str) -> list[dict[str, Any]]:
    return [{"name": "ops", "type": "webhook", "url": f"{url}/ops", "secret": SECRET},
            {"name": "chat", "type": "webhook", "url": f"{url}/chat", "secret": SECRET,
             "format": "slack"}]


async def chat(s: aiohttp.ClientSession, base: str) -> None:
    async with s.post(f"{base}/openai/v1/chat/completions", headers={"X-Meter-Agent": "bot"},
                      json={"model": "cap-model", "max_tokens": 1000,
                            "messages": [{"role": "user", "content": "hi"}]}) as r:
        text = await r.text()  # the whole answer: the call ends as a completed one
        assert r.status == 200, text


async def test_each_threshold_once_across_a_restart(
        aiohttp_server: Any, upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    """$0.004 total, thresholds 50 % and 100 %: the second call ($0.002) crosses 50 %; the
    proxy restarts on the same SQLite ledger (its spend restored, the 50 % notice offered
    again and refused by the outbox); the fourth call ($0.004) crosses 100 %."""
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    rec, url = await receiver(aiohttp_server)
    cfg = {"pricing": PRICES, "notify": sinks(url)[:1], "budgets": [
        {"name": "team", "match": {"agent": "bot"}, "thresholds": [0.5, 1.0],
         "notify": ["ops"], "windows": [{"window": "total", "limit_usd": 0.004}]}]}
    first = await start_proxy(**cfg)
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            await chat(s, first.url)
        await wait_until(lambda: len(rec.got) == 1, what="the 50 % notice")
        await first.server.close()  # SIGTERM's path: records, notices and ledger flushed
        second = await start_proxy(**cfg)
        for _ in range(2):
            await chat(s, second.url)
        await wait_until(lambda: len(rec.got) == 2, what="the 100 % notice")
        # notices go out in order: the re-offered 50 % went before the 100 % one
        async with s.get(f"{second.url}/api/notices") as r:
            listed = (await r.json())["notices"]
    (p1, n1, key1), (p2, n2, key2) = rec.got
    m1 = ("Budget 'team' (total window): $0.002 spent, 50% of its $0.004 limit "
          "(threshold 50%).")
    assert (p1, n1) == ("/ops", {"kind": "threshold", "budget": "team", "window": "total",
                                 "threshold": 0.5, "spend_usd": 0.002, "limit_usd": 0.004,
                                 "resets_at": None, "message": m1})
    assert (p2, n2["threshold"], n2["spend_usd"]) == ("/ops", 1.0, 0.004)
    assert key1 != key2 and len(key1) == 64
    assert rec.bad_signatures == 0 and rec.posts == 2
    assert [(n["threshold"], n["sink"], n["attempts"]) for n in listed] == [
        (1.0, "ops", 0), (0.5, "ops", 0)]
    assert all(n["sent_at"] is not None for n in listed)


async def test_a_forecast_of_exhaustion_once_as_json_and_as_slack_text(
        aiohttp_server: Any, upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    """A day window: a fraction f of the day has gone; one call of $0.001 against a limit
    of $0.001 / ((1 + f) / 2) is (1 + f) / 2 of it, more than f: at this rate the limit is
    reached at start + elapsed * 2 / (1 + f), before midnight."""
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    rec, url = await receiver(aiohttp_server)
    now = datetime.now(UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    f = (now - start).total_seconds() / 86400
    limit = round(0.001 / ((1 + f) / 2), 6)
    proxy = await start_proxy(pricing=PRICES, notify=sinks(url), budgets=[
        {"name": "daily", "match": {"agent": "bot"}, "limit_usd": limit, "window": "day",
         "thresholds": [], "notify": ["ops", "chat"]}])
    async with aiohttp.ClientSession() as s:
        await chat(s, proxy.url)
        await wait_until(lambda: len(rec.got) == 2, what="the forecast to both sinks")
        await chat(s, proxy.url)  # a second call: the forecast was told already
        budgets = proxy.app[state.BUDGETS]
        notifier = budgets.notifier
        await wait_until(lambda: budgets.snapshot()[0]["spend_usd"] == 0.002
                         and not notifier._offered and not notifier._pending,
                         what="the second call settled, nothing left to send")
    got = {p: body for p, body, _ in rec.got}
    facts = got["/ops"]
    exhausts = datetime.strptime(facts.pop("exhausts_at"), "%Y-%m-%dT%H:%M:%S.%fZ"
                                 ).replace(tzinfo=UTC)
    expected = start + (now - start) * 2 / (1 + f)  # elapsed then, or a few seconds more
    assert abs((exhausts - expected).total_seconds()) < 30
    midnight = start + timedelta(days=1)
    assert exhausts < midnight
    message = facts.pop("message")
    assert facts == {"kind": "forecast", "budget": "daily", "window": "day", "threshold": None,
                     "spend_usd": 0.001, "limit_usd": limit,
                     "resets_at": midnight.strftime("%Y-%m-%dT%H:%M:%S.000Z")}
    day = exhausts.day
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    assert f"the day's budget of ${limit:.4g} runs out on the {day}{suffix} (" in message
    assert got["/chat"] == {"text": message}  # Slack's incoming-webhook shape, same facts
    assert rec.posts == 2 and rec.bad_signatures == 0


async def test_a_receiver_down_then_up_gets_the_notice_once(
        aiohttp_server: Any, upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    """The receiver answers 503 three times: the notice is retried with backoff (0.2 s,
    0.5 s, 1 s) and taken on the fourth POST, once; the outbox says so."""
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    rec, url = await receiver(aiohttp_server)
    rec.fail = 3
    proxy = await start_proxy(pricing=PRICES, notify=sinks(url)[:1], budgets=[
        {"name": "team", "match": {"agent": "bot"}, "limit_usd": 0.001, "window": "total",
         "thresholds": [1.0], "notify": ["ops"]}])
    async with aiohttp.ClientSession() as s:
        await chat(s, proxy.url)  # $0.001 of $0.001: 100 %
        await wait_until(lambda: len(rec.got) == 1, what="the notice, after three 503s")
        notifier = proxy.app[state.BUDGETS].notifier
        await wait_until(lambda: not notifier._pending, what="the delivery recorded")
        async with s.get(f"{proxy.url}/api/notices") as r:
            (listed,) = (await r.json())["notices"]
    assert rec.posts == 4 and rec.bad_signatures == 0
    assert [body["threshold"] for _, body, _ in rec.got] == [1.0]
    assert listed["attempts"] == 3 and listed["sent_at"] is not None
    assert listed["last_error"] is None and listed["kind"] == "threshold"


async def test_each_notice_once_across_a_three_replica_fleet(
        tmp_path: Path, aiohttp_server: Any, upstream: FakeUpstream, pg_url: str) -> None:
    """Three replicas share a PostgreSQL ledger; 10 calls of $0.001 spread over them cross
    50 % and 100 % of a $0.01 total budget. Every replica sees the fleet's spend and offers
    both notices (each replica's own records, then once a second, then at shutdown): the
    receiver gets each once, and the outbox holds one sent row per notice."""
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    rec, url = await receiver(aiohttp_server)
    config = f"""
ledger: {{url: "{pg_url}", flush_seconds: 0.05}}
upstreams: {{openai: {{url: "{upstream.url}"}}}}
pricing: {{models: {{cap-model: {{input: 0, output: 1.0}}}}}}
notify:
  - {{name: ops, type: webhook, url: "{url}/ops", secret: {SECRET}}}
budgets:
  - {{name: fleet, match: {{agent: bot}}, limit_usd: 0.01, window: total,
      thresholds: [0.5, 1.0], notify: [ops]}}
"""
    async with AsyncExitStack() as stack, aiohttp.ClientSession() as s:
        dirs = [tmp_path / f"replica{i}" for i in range(3)]
        for d in dirs:
            d.mkdir()
        served_ = await asyncio.gather(*(stack.enter_async_context(served(d, config))
                                         for d in dirs))
        bases = [f"http://127.0.0.1:{port}" for _proc, port in served_]
        await asyncio.gather(*(chat(s, bases[i % 3]) for i in range(10)))
        await wait_until(lambda: len(rec.got) == 2, timeout=30, what="both notices")

        async def fleet_spend(base: str) -> float:
            async with s.get(f"{base}/api/budgets") as r:
                return float((await r.json())["budgets"][0]["spend_usd"])
        for base in bases:  # every replica has read the fleet's $0.01
            for _ in range(300):
                if await fleet_spend(base) == 0.01:
                    break
                await asyncio.sleep(0.05)
            assert await fleet_spend(base) == 0.01
        procs = [proc for proc, _port in served_]
        for p in procs:  # a graceful stop offers every due notice one last time
            p.send_signal(signal.SIGTERM)
        await asyncio.gather(*(p.wait() for p in procs))
    assert sorted(body["threshold"] for _, body, _ in rec.got) == [0.5, 1.0]
    assert rec.posts == 2 and rec.bad_signatures == 0
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT threshold, sent_at FROM tb_notice ORDER BY threshold")
    finally:
        await conn.close()
    assert [(r["threshold"], r["sent_at"] is not None) for r in rows] == [(0.5, True),
                                                                           (1.0, True)]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_a_notice_left_unsent_by_a_crash_is_sent_by_the_next_proxy(
        kind: str, tmp_path: Path, aiohttp_server: Any, start_proxy: StartProxy,
        request: pytest.FixtureRequest) -> None:
    """A row in the outbox, claimed by a process that died before sending it (on SQLite any
    other process; on PostgreSQL a claim not renewed for over a minute): the proxy that
    starts next claims it and sends it, once."""
    rec, url = await receiver(aiohttp_server)
    ledger: dict[str, Any] = {"flush_seconds": 0.05}
    if kind == "postgresql":
        ledger["url"] = request.getfixturevalue("pg_url")
    backend = open_backend(ledger.get("url") or str(tmp_path / "ledger.db"))
    await backend.open()  # the schema, as the crashed proxy left it
    facts = {"kind": "threshold", "budget": "team", "window": "day", "threshold": 0.8,
             "spend_usd": 4.0, "limit_usd": 5.0, "resets_at": None, "message": "80 %"}
    old = (datetime.now(UTC) - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    try:
        added = await backend.notice_offer((
            "team:day|2026-12-03T00:00:00.000Z|threshold:0.8|ops", "ops", "team", "day",
            "2026-12-03T00:00:00.000Z", "threshold", 0.8, json.dumps(facts), old,
            "crashed-replica", old, None))
        assert len(added) == 1
    finally:
        await backend.aclose()
    proxy = await start_proxy(ledger=ledger, notify=sinks(url)[:1], budgets=[
        {"name": "team", "limit_usd": 5, "notify": ["ops"]}])
    await wait_until(lambda: len(rec.got) == 1, what="the crashed proxy's notice")
    notifier = proxy.app[state.BUDGETS].notifier
    await wait_until(lambda: not notifier._pending, what="its delivery recorded")
    assert rec.got[0][:2] == ("/ops", facts) and rec.posts == 1
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/api/notices") as r:
        (listed,) = (await r.json())["notices"]
    assert listed["sent_at"] is not None and listed["attempts"] == 0


async def test_a_limit_far_above_the_spend_forecasts_nothing_and_fails_no_sink(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    """A day window of $1,000,000,000 and one call of $0.001: at this rate the limit is
    reached 1e12 days after midnight, past any date (and past the window's end): no
    forecast, and the budgets sink settles the call without an error."""
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    proxy = await start_proxy(pricing=PRICES, budgets=[
        {"name": "huge", "match": {}, "limit_usd": 1_000_000_000, "window": "day",
         "action": "block"}])
    budgets = proxy.app[state.BUDGETS]
    async with aiohttp.ClientSession() as s:
        await chat(s, proxy.url)
        await wait_until(lambda: budgets.snapshot()[0]["spend_usd"] == 0.001,
                         what="the call settled")
        async with s.get(f"{proxy.url}/metrics") as r:
            metrics = await r.text()
        async with s.get(f"{proxy.url}/api/notices") as r:
            listed = (await r.json())["notices"]
    assert 'tokenbooth_sink_errors_total{sink="budgets"}' not in metrics
    assert listed == []
    assert not budgets.notifier._offered
