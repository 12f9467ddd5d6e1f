"""The ledger under trouble: locked during traffic spools and replays exactly once (a
ledger read-only at start: tests/backends/test_sqlite.py); a SIGKILL leaves a sound
database; a full disk holds rows; the writer outlives every PostgreSQL outage. The SQLite
schema and its migrations are in tests/backends/test_sqlite.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from proxy import state
from proxy.config import parse
from proxy.sinks.ledger import Ledger
from tests.conftest import FakeUpstream, Proxy, Reply, StartProxy, served, wait_until
from tests.factories import make_record
from tests.test_fleet import until

USAGE = json.dumps({"model": "gpt-4o", "usage": {"prompt_tokens": 10,
                                                 "completion_tokens": 2}}).encode()


async def burst(proxy: Proxy, n: int, start: int = 0) -> list[int]:
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> int:
            async with s.post(f"{proxy.url}/openai/v1/chat/completions", json={"n": i}) as r:
                await r.read()
                return r.status
        return list(await asyncio.gather(*(one(i) for i in range(start, start + n))))


def count_rows(path: str) -> tuple[int, int]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT COUNT(*), COUNT(DISTINCT call_id) FROM llm_usage").fetchone()
    finally:
        conn.close()


async def test_locked_database_spools_then_replays_exactly_once(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    upstream.on("/v1/chat/completions", Reply([USAGE]))
    proxy = await start_proxy()
    ledger = proxy.app[state.LEDGER]
    assert await burst(proxy, 5) == [200] * 5
    await proxy.collector.wait_for(5)
    await ledger.flush()
    locker = sqlite3.connect(proxy.config.ledger.path, timeout=0, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        assert await burst(proxy, 20, 5) == [200] * 20  # no request fails
        await proxy.collector.wait_for(25)
        await ledger.flush()
        assert ledger.counts["spooled"] == 20 and ledger.spool_path.exists()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    await wait_until(lambda: not ledger.spool_path.exists())
    assert await burst(proxy, 3, 25) == [200] * 3
    await proxy.collector.wait_for(28)
    await ledger.flush()
    assert count_rows(proxy.config.ledger.path) == (28, 28)


async def test_replay_twice_never_duplicates(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "l.db"), flush_seconds=0.01)
    await ledger.open()
    try:
        rows = [make_record(call_id=f"c{i}").to_row() for i in range(3)]
        ledger._spool(rows)
        ledger._spool(rows[:2])  # a crash between commit and unlink replays these again
        ledger.observe(make_record(call_id="c9"))
        await ledger.flush()
    finally:
        await ledger.aclose()
    assert count_rows(str(tmp_path / "l.db")) == (4, 4)


async def test_many_rows_in_batches_all_written_and_counted(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "t.db"), flush_seconds=0.05)
    await ledger.open()
    try:
        for i in range(5000):
            ledger.observe(make_record(call_id=f"t{i}"))
        await ledger.flush()
    finally:
        await ledger.aclose()
    assert count_rows(str(tmp_path / "t.db")) == (5000, 5000)
    assert ledger.counts == {"written": 5000, "spooled": 0, "dropped": 0}


async def test_sigkill_leaves_a_sound_database(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.on("/v1/chat/completions", Reply([USAGE]))
    db = tmp_path / "k.db"
    config = (f"upstreams: {{openai: {{url: '{upstream.url}'}}}}\n"
              f"ledger: {{path: '{db}', flush_seconds: 0.01}}\n")
    async with served(tmp_path, config) as (proc, port):
        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> None:
                try:
                    async with s.post(f"http://127.0.0.1:{port}/openai/v1/chat/completions",
                                      json={"i": i}) as r:
                        await r.read()
                except aiohttp.ClientError:
                    pass

            tasks = [asyncio.ensure_future(one(i)) for i in range(300)]
            # killed mid-traffic, once the writer has committed some rows
            await wait_until(lambda: db.exists() and count_rows(str(db))[0] > 0,
                             what="a first committed row")
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.gather(*tasks)
        await proc.wait()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM llm_usage").fetchone()[0] > 0  # kept
    finally:
        conn.close()


async def test_a_full_disk_holds_rows_in_memory_until_the_ledger_heals(
        upstream: FakeUpstream, start_proxy: StartProxy, tmp_path: Path) -> None:
    """Database locked and spool unwritable (as on a full disk where both live): no row is
    dropped, /readyz says so, and every row is written once the database takes writes."""
    (tmp_path / "a-file").write_text("")
    upstream.on("/v1/chat/completions", Reply([USAGE]))
    proxy = await start_proxy(ledger={"spool_path": str(tmp_path / "a-file" / "spool")})
    ledger = proxy.app[state.LEDGER]
    locker = sqlite3.connect(proxy.config.ledger.path, timeout=0, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        assert await burst(proxy, 30) == [200] * 30
        await proxy.collector.wait_for(30)
        await ledger.flush()
        assert ledger.counts["dropped"] == 0 and len(ledger.held) == 30
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{proxy.url}/readyz") as r:
                assert r.status == 503 and (await r.json())["held_rows"] == 30
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    await wait_until(lambda: not ledger.held)
    assert count_rows(proxy.config.ledger.path) == (30, 30)
    assert ledger.counts["dropped"] == 0 and ledger.counts["written"] == 30
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/readyz") as r:
            assert r.status == 200


async def test_the_writer_outlives_every_postgres_outage(
        upstream: FakeUpstream, start_proxy: StartProxy, pg_server: Any, pg_url: str) -> None:
    """Traffic never stops while PostgreSQL is stopped (fast and immediate) and the proxy's
    connections are killed: /readyz is 503 while rows wait and 200 once they are written,
    the writer is still running after each outage, and every answered call is one row."""
    upstream.on("/v1/chat/completions", Reply([USAGE]))
    db = await asyncpg.connect(pg_url)
    try:  # the test server runs with synchronous_commit off, which an immediate stop
        # punishes by losing commits it acknowledged; a production server does not
        await db.execute("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET "
                         "synchronous_commit = on', current_database()); END $$")
    finally:
        await db.close()
    proxy = await start_proxy(ledger={"url": pg_url, "flush_seconds": 0.02})
    ledger = proxy.app[state.LEDGER]
    answered: list[str] = []
    statuses: list[int] = []
    done = asyncio.Event()

    async def traffic(s: aiohttp.ClientSession) -> None:
        while not done.is_set():
            async with s.post(f"{proxy.url}/openai/v1/chat/completions", json={}) as r:
                await r.read()
                statuses.append(r.status)
                answered.append(r.headers["X-Meter-Call-Id"])

    async def ready(s: aiohttp.ClientSession, status: int) -> bool:
        async with s.get(f"{proxy.url}/readyz") as r:
            return r.status == status

    async def kill_connections() -> None:
        db = await asyncpg.connect(pg_url)
        try:
            killed = await db.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            assert killed > 0
        finally:
            await db.close()

    async with aiohttp.ClientSession() as s:
        workers = [asyncio.ensure_future(traffic(s)) for _ in range(6)]
        try:
            for outage in ("fast", "kill", "immediate", "fast", "kill", "immediate"):
                goal = len(answered) + 30
                await wait_until(lambda: len(answered) > goal)  # noqa: B023 (awaited here)
                if outage == "kill":
                    await kill_connections()
                else:
                    await asyncio.to_thread(pg_server.stop, outage)
                    try:
                        await until(lambda: ready(s, 503))  # rows wait in the spool
                    finally:
                        await asyncio.to_thread(pg_server.start)
                await until(lambda: ready(s, 200))
                assert ledger.writing()
                # a stale pooled connection may fail one more write after the restart:
                # that batch is spooled and replayed too
                await wait_until(lambda: ledger.stuck_rows == 0)
                running = {t.get_name() for t in asyncio.all_tasks()}
                assert {"tokenbooth-ledger", "tokenbooth-fleet",
                        "tokenbooth-fleet-feed"} <= running  # the heartbeat goes on too
        finally:
            done.set()
            await asyncio.gather(*workers)
    assert set(statuses) == {200}
    await proxy.collector.wait_for(len(answered))
    await ledger.flush()
    await wait_until(lambda: ledger.stuck_rows == 0)
    db = await asyncpg.connect(pg_url)
    try:
        rows = [r[0] for r in await db.fetch("SELECT call_id FROM llm_usage")]
    finally:
        await db.close()
    assert len(rows) == len(set(rows)) == len(answered) and set(rows) == set(answered)


async def test_a_row_spooled_before_list_costs_replays_with_its_cost_as_list_cost(
        tmp_path: Path) -> None:
    """A spool left by a version from before `list_cost_usd`: its rows were charged the list
    price, so they replay with list_cost_usd = cost_usd (NULL stays NULL), as the ledger's
    migration gives the rows already written."""
    from decimal import Decimal

    from proxy.record import COLUMNS

    old = COLUMNS.index("list_cost_usd")  # the columns such a version wrote
    path = tmp_path / "old.db"
    ledger = Ledger(str(path), flush_seconds=0.01)
    ledger.spool_path.write_text("".join(
        json.dumps(list(make_record(call_id=c, cost_usd=cost).to_row()[:old])) + "\n"
        for c, cost in (("priced", Decimal("0.25")), ("unpriced", None))))
    await ledger.open()
    try:
        await wait_until(lambda: not ledger.spool_path.exists(), what="the replay")
        await ledger.flush()
    finally:
        await ledger.aclose()
    conn = sqlite3.connect(path)
    try:
        got = dict(conn.execute("SELECT call_id, list_cost_usd FROM llm_usage"))
        units = conn.execute("SELECT sum(list_cost_units) FROM llm_usage_hourly").fetchone()
    finally:
        conn.close()
    assert got == {"priced": 0.25, "unpriced": None}
    assert units == (2_500_000_000,)


async def test_the_flush_interval_is_the_backends_unless_configured(tmp_path: Path) -> None:
    """SQLite gathers a second of rows into one commit (each commit rewrites the index
    pages its batch touched); PostgreSQL commits every 0.2 s (the commit releases a fleet's
    reservations and charges its spend); `ledger.flush_seconds` overrides both."""
    assert Ledger(str(tmp_path / "a.db")).flush_seconds == 1.0
    assert Ledger(str(tmp_path / "b.db"), flush_seconds=0.3).flush_seconds == 0.3
    # nothing connects before the first use: the URL is only read
    assert Ledger("postgresql://tb@127.0.0.1:9/none").flush_seconds == 0.2
    assert parse({}, env={}).ledger.flush_seconds is None  # the backend's, by default


async def test_shutdown_writes_the_last_batch_without_waiting_out_the_interval(
        tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "s.db"), flush_seconds=60)
    await ledger.open()
    ledger.observe(make_record(call_id="last"))
    started = time.monotonic()
    await ledger.aclose()
    assert time.monotonic() - started < 10  # not the 60 s interval
    assert count_rows(str(tmp_path / "s.db")) == (1, 1)
