"""The PostgreSQL ledger: PostgreSQL restarted mid-traffic (rows spooled, replayed exactly
once), an old schema migrated in place (roll-up built from its rows), and the commands
(report, calls, reprice) on it."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from proxy import state
from proxy.backends.postgres import migrate
from proxy.backends.schema import PG_MIGRATIONS
from proxy.cli import main
from proxy.dialects import PROVIDERS
from proxy.record import COLUMNS
from proxy.sinks.ledger import Ledger
from tests.conftest import FakeUpstream, Reply, StartProxy, wait_until
from tests.factories import make_record
from tests.sinks.test_ledger import burst

USAGE = json.dumps({"model": "gpt-4o", "usage": {"prompt_tokens": 10,
                                                 "completion_tokens": 2}}).encode()


async def count(url: str) -> tuple[int, int]:
    db = await asyncpg.connect(url)
    try:
        row = await db.fetchrow("SELECT count(*), count(DISTINCT call_id) FROM llm_usage")
        return int(row[0]), int(row[1])
    finally:
        await db.close()


async def test_postgres_restarted_mid_traffic_spools_and_replays_once(
        upstream: FakeUpstream, start_proxy: StartProxy, pg_server: Any, pg_url: str) -> None:
    upstream.on("/v1/chat/completions", Reply([USAGE]))
    proxy = await start_proxy(ledger={"url": pg_url})
    ledger = proxy.app[state.LEDGER]
    assert await burst(proxy, 5) == [200] * 5
    await proxy.collector.wait_for(5)
    await ledger.flush()
    pg_server.stop()
    try:
        assert await burst(proxy, 20, 5) == [200] * 20  # no call fails
        await proxy.collector.wait_for(25)
        await ledger.flush()
        assert ledger.counts["spooled"] == 20 and ledger.spool_path.exists()
    finally:
        pg_server.start()
    await wait_until(lambda: not ledger.spool_path.exists())
    assert await burst(proxy, 3, 25) == [200] * 3
    await proxy.collector.wait_for(28)
    await ledger.flush()
    assert await count(pg_url) == (28, 28)
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/api/usage") as r:
        assert (await r.json())["totals"]["calls"] == 28  # roll-up took the replay once


async def test_old_schema_is_migrated_in_place(pg_url: str) -> None:
    db = await asyncpg.connect(pg_url)
    try:
        await db.execute("CREATE TABLE tb_schema (version INTEGER NOT NULL)")
        await db.execute(PG_MIGRATIONS[0][1])  # the first schema: no tier, units, batch
        await db.execute("INSERT INTO tb_schema VALUES (1)")
        old = COLUMNS[:COLUMNS.index("service_tier")]
        rows = [make_record(call_id=f"o{i}", agent="old", cost_usd=Decimal("0.25"))
                .to_row()[:len(old)] for i in range(4)]
        await db.copy_records_to_table("llm_usage", records=rows, columns=old)
    finally:
        await db.close()
    ledger = Ledger(pg_url, flush_seconds=0.01)
    await ledger.open()
    try:
        ledger.observe(make_record(call_id="new", agent="old", service_tier="flex",
                                        cost_usd=Decimal("0.5")))
        await ledger.flush()
        result = await ledger.backend.usage(["agent"], None, None, {})
        assert result["groups"][0]["calls"] == 5 and result["totals"]["cost_usd"] == 1.5
        (row,) = await ledger.backend.calls(None, None, {}, 1, "new")
        assert row["service_tier"] == "flex"
    finally:
        await ledger.aclose()
    db = await asyncpg.connect(pg_url)
    try:
        assert await migrate(db) == len(PG_MIGRATIONS)  # again: nothing to do
        assert await db.fetchval("SELECT max(version) FROM tb_schema") == len(PG_MIGRATIONS)
    finally:
        await db.close()


async def test_commands_work_on_postgres(pg_url: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ledger = Ledger(pg_url, flush_seconds=0.01)
    await ledger.open()
    try:
        for i in range(6):
            ledger.observe(make_record(
                call_id=f"p{i}", started_at=f"2026-11-2{i}T10:00:00.000Z", agent="ana",
                session="s1", model="gpt-4o", request_model="gpt-4o",
                response_model="gpt-4o-2024-08-06", input_tokens=1_000_000,
                cache_read_tokens=0, output_tokens=0, reasoning_tokens=0,
                cost_usd=Decimal("9.99"), price_source="stale"))
        await ledger.flush()
    finally:
        await ledger.aclose()
    assert main(["report", "--db", pg_url, "--by", "agent", "--since", "2026-11-01",
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"][0]["calls"] == 6 and out["totals"]["cost_usd"] == pytest.approx(59.94)
    assert main(["calls", "--db", pg_url, "--session", "s1", "--since", "2026-11-01",
                 "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["rows"]) == 6
    # gpt-4o input is $2.50 per million tokens (OpenAI's price list)
    assert main(["reprice", "--db", pg_url, "--since", "2026-11-01"]) == 0
    capsys.readouterr()
    assert main(["report", "--db", pg_url, "--by", "model", "--since", "2026-11-01",
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["cost_usd"] == pytest.approx(6 * 2.5)  # the roll-up follows
    db = await asyncpg.connect(pg_url)
    try:
        assert await db.fetchval("SELECT sum(cost_units) FROM llm_usage_hourly") == \
            15 * 10**10
    finally:
        await db.close()


async def test_quota_headers_are_kept_and_reported_on_postgres(
        pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ledger = Ledger(pg_url, flush_seconds=0.01)
    await ledger.open()
    try:
        # one account's 5-hour readings, s1 then s2 then s1: 0.40, 0.46, 0.50
        for i, (session, u) in enumerate((("s1", "0.4"), ("s2", "0.46"), ("s1", "0.5"))):
            headers = {"anthropic-ratelimit-unified-5h-utilization": u,
                       "anthropic-ratelimit-unified-5h-reset": "1785182400"}
            quota = PROVIDERS["anthropic"].quota(headers, 1785170000.0 + i)
            ledger.observe(make_record(
                call_id=f"q{i}", started_at=f"2026-11-20T10:0{i}:00.000Z", upstream="anthropic",
                dialect="anthropic", key_id="k_acct", session=session, quota=quota))
        await ledger.flush()
        (row,) = await ledger.backend.calls(None, None, {}, 1, "q1")
        assert row["quota"] == {"anthropic-ratelimit-unified-5h-utilization": "0.46",
                                "anthropic-ratelimit-unified-5h-reset": "1785182400"}
    finally:
        await ledger.aclose()
    # s1: 0.46 - 0.40 = 0.06 (its last call is the window's latest); s2: 0.50 - 0.46 = 0.04
    assert main(["report", "--quota", "--db", pg_url, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = {r["session"]: (r["calls"], r["measured_calls"], r["share"]) for r in doc["rows"]}
    assert got == {"s1": (2, 1, pytest.approx(0.06)), "s2": (1, 1, pytest.approx(0.04))}


async def test_copy_ledger_from_sqlite_once_even_when_run_twice(
        pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "old.db")
    ledger = Ledger(path, flush_seconds=0.01)
    await ledger.open()
    try:
        for i in range(25):
            ledger.observe(make_record(call_id=f"s{i}", agent=f"a{i % 2}",
                                            cost_usd=Decimal("0.004")))
        await ledger.flush()
    finally:
        await ledger.aclose()
    assert main(["copy-ledger", "--db", path, "--to", pg_url]) == 0
    first = capsys.readouterr().out
    assert "copied 25 row(s)" in first and "skipped" not in first
    assert main(["copy-ledger", "--db", path, "--to", pg_url]) == 0
    again = capsys.readouterr().out  # it copies nothing, and says so
    assert "copied 0 row(s)" in again and "skipped 25 it held already" in again
    assert await count(pg_url) == (25, 25)
    db = await asyncpg.connect(pg_url)
    try:
        assert await db.fetchval("SELECT sum(calls) FROM llm_usage_hourly") == 25
        assert await db.fetchval("SELECT sum(cost_units) FROM llm_usage_hourly") == \
            25 * 4 * 10**7  # 0.004 USD each, in 1e-10 USD units
    finally:
        await db.close()


def test_unreachable_postgres_at_start_is_one_clear_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import free_port

    monkeypatch.chdir(tmp_path)
    url = f"postgresql://tokenbooth:s3cret@127.0.0.1:{free_port()}/x"
    assert main(["serve", "--db", url, "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tokenbooth: cannot open the ledger: postgresql ledger at "
                          "postgresql://tokenbooth:***@127.0.0.1:")
    assert "s3cret" not in err and "Traceback" not in err


async def test_an_export_cursor_never_skips_a_row_committed_out_of_order(pg_url: str) -> None:
    """Replica A takes an id, replica B takes the next one and commits first: the cursor
    must not move past A's row before A commits (ids are handed out before commit)."""
    from proxy.backends.postgres import PostgresBackend

    b = PostgresBackend(pg_url)
    await b.open()
    cursor = b.export_cursor("hook")
    slow = await asyncpg.connect(pg_url)
    try:
        assert await cursor.acquire()
        tx = slow.transaction()
        await tx.start()
        await slow.copy_records_to_table("llm_usage", columns=COLUMNS,
                                         records=[make_record(call_id="slow").to_row()])
        await b.write([make_record(call_id="fast").to_row()])
        delivered: list[str] = []
        for commit_before in (False, True):
            if commit_before:
                await tx.commit()
            got = await cursor.rows(100)
            delivered += [r[0] for _, r in got]
            if got:
                await cursor.advance(got[-1][0])
        ids = await slow.fetch("SELECT call_id FROM llm_usage ORDER BY id")
        assert [r[0] for r in ids] == ["slow", "fast"]  # slow took the smaller id
        assert delivered == ["slow", "fast"]
    finally:
        await slow.close()
        await cursor.release()
        await b.aclose()


async def test_one_replica_delivers_a_sink_and_another_takes_over_when_it_dies(
        pg_url: str) -> None:
    from proxy.backends.postgres import _EXPORT_LOCK, PostgresBackend

    replicas = [PostgresBackend(pg_url), PostgresBackend(pg_url)]
    for b in replicas:
        await b.open()
    first, second = (b.export_cursor("hook") for b in replicas)
    admin = await asyncpg.connect(pg_url)
    try:
        assert await first.acquire()
        assert not await second.acquire()  # held by the first
        await replicas[0].write([make_record(call_id=f"r{i}").to_row() for i in range(3)])
        got = await first.rows(2)
        await first.advance(got[-1][0])
        # the first replica dies: its connection (and lock) go with it
        assert await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = "
            "'advisory' AND classid = $1 AND database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())", _EXPORT_LOCK) == 1
        assert await second.acquire()
        assert [r[0] for _, r in await second.rows(10)] == ["r2"]  # from the stored cursor
    finally:
        await admin.close()
        for c in (first, second):
            await c.release()
        for b in replicas:
            await b.aclose()


async def test_a_nul_in_a_filter_is_400_not_ledger_unavailable(start_proxy: StartProxy,
                                                                pg_url: str) -> None:
    """PostgreSQL refuses NUL in text; that is the caller's bad value, not a ledger down."""
    proxy = await start_proxy(ledger={"url": pg_url})
    async with aiohttp.ClientSession() as s:
        for path, param in (("/api/usage?agent=%00", "agent"),
                            ("/api/calls?session=a%00b", "session"),
                            ("/api/calls/%00", "call_id")):
            async with s.get(f"{proxy.url}{path}") as r:
                assert r.status == 400, path
                assert (await r.json())["error"]["param"] == param
        async with s.get(f"{proxy.url}/api/usage?agent=a") as r:
            assert r.status == 200  # the ledger itself is fine
