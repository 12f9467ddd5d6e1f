"""The SQLite backend on a real file: migrations (and a ledger from before the roll-ups),
writes that are one transaction with their roll-up, a failed write rolled back, reads on
their own connections, retention that keeps the newest id, and clear read errors."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

from proxy.backends.query import QueryError
from proxy.backends.schema import SQLITE_MIGRATIONS as MIGRATIONS
from proxy.backends.sqlite import SqliteBackend, migrate
from proxy.sinks.ledger import Ledger
from tests.conftest import FakeUpstream, Reply, obey_file_modes, served, wait_until
from tests.factories import make_record
from tests.sinks.test_ledger import count_rows
from tests.test_fleet import until


def row(call_id: str, **kw: object) -> tuple[object, ...]:
    return make_record(call_id=call_id, **kw).to_row()


async def opened(tmp_path: Path) -> SqliteBackend:
    backend = SqliteBackend(str(tmp_path / "sub" / "ledger.db"))
    await backend.open()  # the directory is made
    return backend


async def test_migrations_set_the_schema_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db")
    try:
        assert migrate(conn) == len(MIGRATIONS)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert migrate(conn) == len(MIGRATIONS)  # idempotent
        cols = [r[1] for r in conn.execute("PRAGMA table_info(llm_usage)")]
        from proxy.record import COLUMNS

        assert cols == ["id", *COLUMNS]
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(llm_usage)")}
        assert {"llm_usage_started", "llm_usage_agent", "llm_usage_session",
                "llm_usage_model"} <= indexes
    finally:
        conn.close()


async def test_a_ledger_from_before_the_rollups_gets_them_built_from_its_rows(
        tmp_path: Path) -> None:
    path = str(tmp_path / "v2.db")
    conn = sqlite3.connect(path)
    try:
        for _name, sql in MIGRATIONS[:2]:  # the schema before the roll-ups
            conn.executescript(sql)
        conn.execute("PRAGMA user_version = 2")
        from proxy.record import COLUMNS

        old = COLUMNS[:COLUMNS.index("quota")]  # the columns of that schema
        conn.executemany(f"INSERT INTO llm_usage ({', '.join(old)}) VALUES "
                         f"({', '.join('?' * len(old))})",
                         [make_record(call_id=f"v{i}", agent="old", cost_usd=Decimal("0.5"),
                                      started_at=f"2026-11-0{1 + i % 3}T1{i}:00:00.000Z")
                          .to_row()[:len(old)] for i in range(6)])
        conn.commit()
    finally:
        conn.close()
    ledger = Ledger(path, flush_seconds=0.01)
    await ledger.open()
    try:
        ledger.observe(make_record(call_id="n", agent="old", cost_usd=Decimal("0.25"),
                                        started_at="2026-11-03T09:30:00.000Z"))
        await ledger.flush()
        result = await ledger.backend.usage(["agent", "day"], None, None, {})
        assert [(g["day"], g["calls"], g["cost_usd"]) for g in result["groups"]] == [
            ("2026-11-03", 3, 1.25), ("2026-11-01", 2, 1.0), ("2026-11-02", 2, 1.0)]
    finally:
        await ledger.aclose()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("SELECT SUM(calls) FROM llm_usage_daily").fetchone()[0] == 7
        assert conn.execute("SELECT SUM(calls) FROM llm_usage_hourly").fetchone()[0] == 7
    finally:
        conn.close()


async def test_a_migration_that_fails_midway_leaves_the_ledger_as_it_was(
        tmp_path: Path) -> None:
    """Each migration is one transaction with its schema version: one that fails on a later
    statement (here: a stray `list_cost_units` column already on the daily roll-up) leaves
    neither its earlier statements nor a new version behind, so the ledger opens once the
    cause is gone (before, `llm_usage.list_cost_usd` stayed and every open failed on it)."""
    from proxy.backends.schema import _LIST_COST_NAME
    from proxy.record import COLUMNS

    path = str(tmp_path / "ledger.db")
    before = [name for name, _ in MIGRATIONS].index(_LIST_COST_NAME)
    old = COLUMNS[:COLUMNS.index("list_cost_usd")]  # the columns of that schema
    conn = sqlite3.connect(path)
    try:
        for _name, sql in MIGRATIONS[:before]:
            conn.executescript(sql)
        conn.execute(f"PRAGMA user_version = {before}")
        conn.execute(f"INSERT INTO llm_usage ({', '.join(old)}) VALUES "
                     f"({', '.join('?' * len(old))})",
                     make_record(call_id="old", cost_usd=Decimal("0.5")).to_row()[:len(old)])
        conn.execute("ALTER TABLE llm_usage_daily ADD COLUMN list_cost_units INTEGER")
        conn.commit()
    finally:
        conn.close()

    def schema() -> tuple[int, list[str], list[str]]:
        conn = sqlite3.connect(path)
        try:
            return (conn.execute("PRAGMA user_version").fetchone()[0],
                    [r[1] for r in conn.execute("PRAGMA table_info(llm_usage)")],
                    [r[1] for r in conn.execute("PRAGMA table_info(llm_usage_hourly)")])
        finally:
            conn.close()

    with pytest.raises(sqlite3.OperationalError, match="duplicate column name: list_cost"):
        await SqliteBackend(path).open()
    version, columns, hourly = schema()
    assert version == before  # the failed migration left nothing of itself
    assert "list_cost_usd" not in columns and "list_cost_units" not in hourly
    conn = sqlite3.connect(path)
    try:  # the cause gone, the ledger opens and the migration runs whole
        conn.execute("ALTER TABLE llm_usage_daily DROP COLUMN list_cost_units")
        conn.commit()
    finally:
        conn.close()
    backend = SqliteBackend(path)
    await backend.open()
    await backend.aclose()
    assert schema()[0] == len(MIGRATIONS)
    conn = sqlite3.connect(path)
    try:  # the row from before is charged its list price
        assert conn.execute("SELECT cost_usd, list_cost_usd FROM llm_usage").fetchall() == \
            [(0.5, 0.5)]
    finally:
        conn.close()


async def test_a_ledger_opens_in_wal_mode_at_the_latest_schema(tmp_path: Path) -> None:
    backend = await opened(tmp_path)
    await backend.aclose()
    conn = sqlite3.connect(backend.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        conn.close()


async def test_rows_written_once_recorded_and_read_back(tmp_path: Path) -> None:
    backend = await opened(tmp_path)
    try:
        await backend.write([row(f"c{i}", agent="ana" if i % 2 else "bo",
                                 cost_usd=Decimal("0.25"), upstream_request_id=f"req-{i}",
                                 started_at=f"2026-11-20T10:0{i}:00.000Z") for i in range(6)])
        await backend.write([row("c0")])  # again: ignored, not a second row
        ids = [f"c{i}" for i in range(1200)]  # more ids than one query takes
        assert await backend.recorded(ids) == {f"c{i}" for i in range(6)}
        calls = await backend.calls(None, None, {"agent": "ana"}, 10)
        assert [c["call_id"] for c in calls] == ["c5", "c3", "c1"]  # newest first
        one = await backend.calls(None, None, {}, 1, "c4")
        assert one[0]["call_id"] == "c4" and one[0]["tags"] == {"agent": "bo"}
        usage = await backend.usage(["agent"], None, None, {})
        assert {g["agent"]: (g["calls"], g["cost_usd"]) for g in usage["groups"]} == {
            "ana": (3, 0.75), "bo": (3, 0.75)}  # 3 calls at $0.25 each
        assert usage["totals"]["calls"] == 6
        assert await backend.spend({"agent": "ana"}, None) == Decimal("0.75")
        assert await backend.spend({"agent": "ana"}, "2026-11-20T10:02:00.000Z") \
            == Decimal("0.50")  # c3 and c5
        assert sorted(await backend.request_ids(["req-1", "req-9"])) == [("req-1", "reported")]
        after = await backend.rows_after(2, 2)
        assert [(i, r[0]) for i, r in after] == [(3, "c2"), (4, "c3")]
        assert after[0][1] == row("c2", agent="bo", cost_usd=Decimal("0.25"),
                                  upstream_request_id="req-2",
                                  started_at="2026-11-20T10:02:00.000Z")
    finally:
        await backend.aclose()


async def test_a_failed_write_is_rolled_back_and_the_next_one_works(tmp_path: Path) -> None:
    backend = await opened(tmp_path)
    try:
        with pytest.raises(backend.unavailable):
            await backend.write([row("ok1"), ("too", "short")])
        await backend.reset()
        assert await backend.recorded(["ok1"]) == set()  # nothing of the failed batch
        await backend.write([row("ok2")])
        assert await backend.recorded(["ok1", "ok2"]) == {"ok2"}
    finally:
        await backend.aclose()


async def test_a_locked_ledger_is_unavailable_not_a_hang(tmp_path: Path) -> None:
    backend = await opened(tmp_path)
    locker = sqlite3.connect(backend.path, timeout=0, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(backend.unavailable):
            await asyncio.wait_for(backend.write([row("w")]), 10)
        await backend.reset()
        locker.execute("ROLLBACK")
        await backend.write([row("w")])
        assert await backend.recorded(["w"]) == {"w"}
    finally:
        locker.close()
        await backend.aclose()


async def test_retention_deletes_old_rows_but_never_the_newest_id(tmp_path: Path) -> None:
    backend = await opened(tmp_path)
    try:
        await backend.write([row(f"old{i}", started_at="2026-01-01T00:00:00.000Z")
                             for i in range(3)])
        assert await backend.purge("2026-06-01T00:00:00.000Z") == 2
        assert await backend.recorded(["old0", "old1", "old2"]) == {"old2"}
        await backend.write([row("new")])
        assert [i for i, _ in await backend.rows_after(0, 10)] == [3, 4]  # no id reused
        usage = await backend.usage([], None, None, {})
        assert usage["totals"]["calls"] == 4  # the roll-up keeps the deleted rows' hours
    finally:
        await backend.aclose()


async def test_reading_a_ledger_that_is_not_there_names_it(tmp_path: Path) -> None:
    backend = SqliteBackend(str(tmp_path / "missing.db"))
    with pytest.raises(QueryError, match="no ledger at"):
        await backend.usage([], None, None, {})
    assert not (tmp_path / "missing.db").exists()  # a read never creates one


USAGE = json.dumps({"model": "gpt-4o", "usage": {"prompt_tokens": 10,
                                                 "completion_tokens": 2}}).encode()


async def test_a_ledger_read_only_at_start_is_written_once_it_is_writable(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.on("/v1/chat/completions", Reply([USAGE]))
    db = tmp_path / "ro.db"
    ledger = Ledger(str(db))
    await ledger.open()  # an existing ledger, schema and all
    await ledger.aclose()
    db.chmod(0o444)
    config = (f"upstreams: {{openai: {{url: '{upstream.url}'}}}}\n"
              f"ledger: {{path: '{db}', flush_seconds: 0.01}}\n")
    async with served(tmp_path, config, preexec_fn=obey_file_modes) as (_proc, port):
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            for i in range(5):
                async with s.post(f"{base}/openai/v1/chat/completions", json={"i": i}) as r:
                    assert r.status == 200

            async def readyz() -> tuple[int, dict[str, object]]:
                async with s.get(f"{base}/readyz") as r:
                    return r.status, await r.json()

            async def stuck() -> tuple[int, dict[str, object]] | None:
                got = await readyz()
                return got if got[0] == 503 and got[1].get("spooled_rows") == 5 else None
            # the rows wait in the spool, and readiness says so
            assert (await until(stuck))[1] == {"status": "ledger_unavailable",
                                               "spooled_rows": 5, "held_rows": 0}
            assert count_rows(str(db)) == (0, 0)
            db.chmod(0o644)
            await wait_until(lambda: count_rows(str(db)) == (5, 5))

            async def ready() -> bool:
                return (await readyz())[0] == 200
            await until(ready)
