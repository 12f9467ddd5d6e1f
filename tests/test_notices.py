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
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from proxy import state
from proxy.admission.budgets import Window, WindowSpec
from proxy.backends import open_backend
from proxy.notices import due
from tests.conftest import FakeUpstream, Reply, StartProxy, served, wait_until
from tests.factories import chat_json

SECRET = "whsec-notices"
# cap-model: input free, $1.00 per million output tokens; each call answers 1000 output
# tokens: 1000 * $1 / 1e6 = $0.001 a call.
PRICES = {"models": {"cap-model": {"input": 0, "output": 1.0}}}
CHAT = chat_json("cap-model", {"prompt_tokens": 12, "completion_tokens": 1000})


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
    """A calendar window (the day, week or month: whichever has run the largest fraction f,
    a forecast waits for a tenth of its window): one call of $0.001 against a limit of
    $0.001 / ((1 + f) / 2) is (1 + f) / 2 of it, more than f (and more than a quarter): at
    this rate the limit is reached at start + elapsed * 2 / (1 + f), before the end."""
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    rec, url = await receiver(aiohttp_server)
    now = datetime.now(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    spans = {"day": (day, day + timedelta(days=1)),
             "week": (day - timedelta(days=day.weekday()),
                      day + timedelta(days=7 - day.weekday())),
             "month": (month, (month + timedelta(days=32)).replace(day=1))}
    window, (start, end) = max(spans.items(),
                               key=lambda kv: (now - kv[1][0]) / (kv[1][1] - kv[1][0]))
    f = (now - start) / (end - start)
    assert f >= 0.1, "all three windows began less than a tenth ago (a Monday 1st-3rd, early)"
    limit = round(0.001 / ((1 + f) / 2), 6)
    proxy = await start_proxy(pricing=PRICES, notify=sinks(url), budgets=[
        {"name": "daily", "match": {"agent": "bot"}, "limit_usd": limit, "window": window,
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
    # elapsed * limit / spend (limit as rounded: about 2 / (1 + f)); elapsed then, or a few
    # seconds more
    expected = start + (now - start) * (limit / 0.001)
    assert abs((exhausts - expected).total_seconds()) < 30
    assert exhausts < end
    message = facts.pop("message")
    assert facts == {"kind": "forecast", "budget": "daily", "window": window, "threshold": None,
                     "spend_usd": 0.001, "limit_usd": limit,
                     "resets_at": end.strftime("%Y-%m-%dT%H:%M:%S.000Z")}
    day_of = exhausts.day
    suffix = "th" if 10 <= day_of % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(
        day_of % 10, "th")
    assert f"the {window}'s budget of ${limit:.4g} runs out on the {day_of}{suffix} (" in message
    assert got["/chat"] == {"text": message}  # Slack's incoming-webhook shape, same facts
    assert rec.posts == 2 and rec.bad_signatures == 0


def month_window(limit: float) -> Window:
    return Window(WindowSpec("m", "m", "month", {}, limit, "month", "alert"))


def test_no_forecast_from_early_or_small_spend() -> None:
    """December 2026 has 31 days (2,678,400 s); a tenth of it is 3.1 days: 2026-12-04T02:24Z.
    A $100 month. $0.01 one minute in forecasts exhaustion 10,000 minutes in (the 7th):
    too early to tell. $30 (30 %) on the 3rd at 00:00 (2 days in) is still before a tenth
    of the month. $20 (20 %) on the 5th (4 days in, 12.9 %) is under a quarter of the limit.
    $30 on the 5th at 00:00: 4 days * 100 / 30 = 13.33 days in: the 14th at 08:00, before
    January: told once; the window's one forecast was not used up by the early calls."""
    w = month_window(100.0)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    w.spend = Decimal("0.01")
    assert due(w, start + timedelta(minutes=1)) == []
    w.spend = Decimal("30")
    assert due(w, datetime(2026, 12, 3, tzinfo=UTC)) == []
    w.spend = Decimal("20")
    assert due(w, datetime(2026, 12, 5, tzinfo=UTC)) == []
    w.spend = Decimal("30")
    [notice] = due(w, datetime(2026, 12, 5, tzinfo=UTC))
    assert notice.kind == "forecast"
    assert notice.exhausts_at == datetime(2026, 12, 14, 8, 0, tzinfo=UTC)
    assert due(w, datetime(2026, 12, 6, tzinfo=UTC)) == []  # once per window


def test_a_rolling_windows_threshold_is_told_on_each_crossing_not_each_hour() -> None:
    """A 5-hour rolling window of $1, told at 50 %. $0.60 spent in the 10:00 hour: at 10:30
    (window 06:00-11:00) it crossed: told. At 11:30 (07:00-12:00) and 14:30 (10:00-15:00)
    the $0.60 is still in the window: no crossing, nothing (once an hour, before). At 16:30
    (12:00-17:00) the 10:00 hour has aged out: $0, below. $0.70 in the 16:00 hour: a new
    crossing at 16:40, told again (keyed by that window's start, 12:00)."""
    spec = WindowSpec("r:rolling_5h", "r", "rolling_5h", {}, 1.0, "rolling", "alert",
                      hours=5, thresholds=(0.5,))
    at = datetime(2026, 12, 3, 10, 30, tzinfo=UTC)
    w = Window(spec, window_end=datetime(2026, 12, 3, 11, tzinfo=UTC))
    w.hourly = {"2026-12-03T10:00:00.000Z": Decimal("0.60")}
    w.spend = Decimal("0.60")
    [told] = due(w, at)
    assert (told.threshold, told.window_start) == (0.5, "2026-12-03T06:00:00.000Z")
    assert due(w, at.replace(hour=11)) == []
    assert due(w, at.replace(hour=14)) == []
    assert due(w, at.replace(hour=16)) == [] and w.spend == 0
    w.hourly["2026-12-03T16:00:00.000Z"] = w.spend = Decimal("0.70")
    [again] = due(w, at.replace(hour=16, minute=40))
    assert (again.threshold, again.window_start) == (0.5, "2026-12-03T12:00:00.000Z")
    assert again.outbox_key("ops") != told.outbox_key("ops")
    # a restart is not a crossing: what the restored spend has reached counts as told
    restarted = Window(spec, window_end=datetime(2026, 12, 3, 17, tzinfo=UTC))
    restarted.hourly = {"2026-12-03T16:00:00.000Z": Decimal("0.70")}
    restarted.spend = Decimal("0.70")
    restarted.reached()
    assert due(restarted, at.replace(hour=16, minute=50)) == []


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


async def test_a_slow_receiver_past_the_lease_never_gets_a_notice_twice(
        aiohttp_server: Any, pg_url: str) -> None:
    """Replica A sends its notices one after another; the receiver holds A's first POST
    while the claim A holds on its second lapses (its `claimed_at` set back past the lease,
    as the clock would move it) and replica B takes that row. A must not send it as well:
    each notice reaches the receiver once, and the outbox records each sent once."""
    from proxy.backends.postgres import PostgresBackend
    from proxy.config import NotifyConfig
    from proxy.notices import Notice, Notifier

    gate, got = asyncio.Event(), []

    async def handle(request: web.Request) -> web.Response:
        got.append(request.path)
        if request.path == "/first":
            await asyncio.wait_for(gate.wait(), 10)  # a slow receiver (bounded)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{hook}", handle)
    url = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    hooks = [NotifyConfig("first", f"{url}/first"), NotifyConfig("second", f"{url}/second")]
    backend = PostgresBackend(pg_url)
    await backend.open()
    a, b = Notifier(hooks), Notifier(hooks)
    try:
        a.start(backend, "replica-a", shared=True)
        b._outbox, b.replica = backend, "replica-b"  # B claims and sends when told here
        a.offer([Notice("threshold", "team", "team", "total", "", 1.0, Decimal("1"), 1.0,
                        None, ("first", "second"))])
        await wait_until(lambda: got == ["/first"], what="A's first POST, held")
        pool = await backend._get_pool()
        await pool.execute("UPDATE tb_notice SET claimed_at = '2000-01-01T00:00:00.000Z' "
                           "WHERE sink = 'second'")  # A's claim on it has lapsed
        await b._claim()
        assert [p.row["sink"] for p in b._pending.values()] == ["second"]
        gate.set()
        await wait_until(lambda: not a._pending, what="A done with what it holds")
        await b._deliver_due(asyncio.get_running_loop().time())
        rows = await pool.fetch("SELECT sink, claimed_by, sent_at FROM tb_notice ORDER BY sink")
    finally:
        gate.set()
        await a.aclose()
        await b.aclose()
        await backend.aclose()
    assert sorted(got) == ["/first", "/second"]  # each once
    assert [(r["sink"], r["claimed_by"]) for r in rows] == [("first", "replica-a"),
                                                             ("second", "replica-b")]
    assert all(r["sent_at"] is not None for r in rows)


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
