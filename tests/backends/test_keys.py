"""Consumer keys in the ledger, on both backends: stored as written, every change moves the
version a serving process polls, the calls a key made are counted from its rows, a ledger
from before keys gains them on open, and on PostgreSQL a change is NOTIFYed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

import asyncpg

from proxy.backends import open_backend, parse_url
from proxy.backends.schema import KEY_COLUMNS, PG_MIGRATIONS, SQLITE_MIGRATIONS
from proxy.keyring import KeyAdmin, KeyRegistry, install_secret
from proxy.keys import KeyLimits
from proxy.sinks.ledger import Ledger
from tests.conftest import wait_until
from tests.factories import make_record

ROW = {"id": "key_000000000001", "name": "alice", "hash": "a" * 64, "last4": "wxyz",
       "tags": '{"team": "ml"}', "upstreams": "[]", "models": '["gpt-4o*"]',
       "expires_at": None, "limits": '{"requests_per_minute": 5}',
       "created_at": "2026-12-03T12:00:00.000Z", "revoked_at": None}


async def test_keys_are_stored_and_each_change_moves_the_version(target: str) -> None:
    backend = open_backend(target)
    await backend.open()
    try:
        v0, rows = await backend.keys()
        assert rows == [] and await backend.keys_version() == v0
        await backend.add_key(ROW)
        v1, rows = await backend.keys()
        assert v1 == v0 + 1 and rows == [ROW] and set(rows[0]) == set(KEY_COLUMNS)
        assert await backend.change_key(ROW["id"], {"revoked_at": "2026-12-03T13:00:00.000Z"})
        assert await backend.keys_version() == v1 + 1
        assert (await backend.keys())[1][0]["revoked_at"] == "2026-12-03T13:00:00.000Z"
        # no such key: nothing changes, not even the version
        assert not await backend.change_key("key_nope", {"name": "x"})
        assert await backend.keys_version() == v1 + 1
    finally:
        await backend.aclose()


async def test_a_keys_calls_and_last_use_come_from_its_rows(target: str) -> None:
    ledger = Ledger(target, flush_seconds=0.01)
    await ledger.open()
    try:
        await ledger.backend.add_key(ROW)
        for i, (key, at, cost) in enumerate([
                (ROW["id"], "2026-12-02T23:59:59.000Z", Decimal("0.5")),  # yesterday
                (ROW["id"], "2026-12-03T08:00:00.000Z", Decimal("0.000125")),
                (ROW["id"], "2026-12-03T09:30:00.000Z", None),  # unpriced: a call, no cost
                (None, "2026-12-03T10:00:00.000Z", Decimal("1"))]):  # another client's
            ledger.observe(make_record(call_id=f"c{i}", started_at=at, ended_at=at,
                                            cost_usd=cost, consumer_key=key))
        await ledger.flush()
        backend = ledger.backend
        assert await backend.key_calls(ROW["id"], "2026-12-03T00:00:00.000Z") == \
            (2, Decimal("0.000125"))
        assert await backend.key_calls("key_other", "2026-12-03T00:00:00.000Z") == \
            (0, Decimal(0))
        assert await backend.keys_last_used() == {ROW["id"]: "2026-12-03T09:30:00.000Z"}
        got = await backend.calls(None, None, {}, 10, "c1")
        assert got[0]["consumer_key"] == ROW["id"]
    finally:
        await ledger.aclose()


async def test_a_ledger_from_before_keys_gains_them_on_open(target: str) -> None:
    backend = open_backend(target)
    await backend.open()
    await backend.aclose()
    undo = ("DROP INDEX llm_usage_consumer_key;\nALTER TABLE llm_usage DROP COLUMN consumer_key;"
            "\nDROP TABLE tb_keys;\nDROP TABLE tb_keys_version;\n")
    name = "consumer keys: issued at run time, stored hashed; each call's consumer_key"
    if parse_url(target).local:
        conn = sqlite3.connect(target)
        conn.executescript(undo)
        conn.execute(f"PRAGMA user_version = {[n for n, _ in SQLITE_MIGRATIONS].index(name)}")
        conn.commit()
        conn.close()
    else:
        db = await asyncpg.connect(target)
        await db.execute(undo)
        await db.execute("DELETE FROM tb_schema WHERE version > $1",
                         [n for n, _ in PG_MIGRATIONS].index(name))
        await db.close()
    backend = open_backend(target)
    await backend.open()
    try:
        assert await backend.keys() == (0, [])
        await backend.add_key(ROW)
        assert await backend.keys_version() == 1
    finally:
        await backend.aclose()


async def test_admin_and_registry_share_the_install_secret(target: str) -> None:
    backend = open_backend(target)
    await backend.open()
    try:
        secret = await install_secret(backend)
        assert secret == await install_secret(backend)  # one per install
        admin = KeyAdmin(backend, secret)
        stored, key = await admin.create({"name": "bob", "limits": KeyLimits(10)})
        registry = KeyRegistry(backend, secret)
        await registry.load()
        found = registry.lookup(key)
        assert found is not None and found.key == stored.key and found.last4 == key[-4:]
        assert registry.lookup(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        rotated, new = await admin.rotate(stored.key.id) or (None, "")
        assert rotated is not None and new != key and rotated.key == stored.key
        await registry.load()
        assert registry.lookup(key) is None and registry.lookup(new) is not None
        revoked = await admin.revoke(stored.key.id)
        assert revoked is not None and revoked.revoked_at is not None
        assert await admin.revoke("key_nope") is None and await admin.rotate("key_nope") is None
    finally:
        await backend.aclose()


async def test_postgresql_notifies_every_listener_of_a_change(pg_url: str) -> None:
    writer, reader = open_backend(pg_url), open_backend(pg_url)
    await writer.open()
    await reader.open()
    try:
        heard = asyncio.Event()
        assert reader.fleet is not None
        await reader.fleet.watch_keys(heard.set)
        assert reader.fleet.watching_keys()
        await writer.add_key(ROW)
        await asyncio.wait_for(heard.wait(), 5)
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_a_budget_matching_a_key_counts_its_rows(target: str) -> None:
    """Restored spend (both backends) and, on PostgreSQL, the fleet's spend charged in the
    write transaction: a budget with `match: {key: <id>}` holds exactly the key's priced
    rows."""
    ledger = Ledger(target, flush_seconds=0.01)
    await ledger.open()
    backend = ledger.backend
    try:
        fleet = backend.fleet
        if fleet is not None:
            await fleet.define_budgets([("k-day", "day", {"key": ROW["id"]},
                                         "2026-12-03T00:00:00.000Z")])
        for i, (key, cost) in enumerate([(ROW["id"], Decimal("0.25")),
                                         (ROW["id"], Decimal("0.125")),
                                         ("key_other", Decimal("4")), (None, Decimal("8"))]):
            ledger.observe(make_record(call_id=f"b{i}", started_at="2026-12-03T10:00:00.000Z",
                                            ended_at="2026-12-03T10:00:01.000Z", cost_usd=cost,
                                            consumer_key=key))
        await ledger.flush()
        assert await backend.spend({"key": ROW["id"]}, "2026-12-03T00:00:00.000Z") == \
            Decimal("0.375")  # 0.25 + 0.125
        if fleet is not None:
            state = await fleet.budget_state([("k-day", "2026-12-03T00:00:00.000Z")])
            assert state["k-day"] == (Decimal("0.375"), Decimal(0))
    finally:
        await ledger.aclose()


async def test_on_sqlite_a_key_written_by_another_connection_moves_the_signature(
        tmp_path: Path) -> None:
    """A serving process reads the keys' version only when the ledger file's stat moved: a
    change made through another connection (the CLI's, another process) moves it, and the
    registry polling every 20 ms loads the new key; nothing written, nothing moves."""
    path = str(tmp_path / "ledger.db")
    serving = open_backend(path)
    await serving.open()
    registry = KeyRegistry(serving, await install_secret(serving), poll_seconds=0.02)
    await registry.open()
    registry.start()
    cli = open_backend(path)
    try:
        before = serving.keys_signature()
        assert serving.keys_signature() == before  # no write: the same
        await cli.open()
        await cli.add_key(ROW)
        assert serving.keys_signature() != before
        await wait_until(lambda: ROW["id"] in registry.by_id, what="the new key loaded")
    finally:
        await registry.aclose()
        await cli.aclose()
        await serving.aclose()


async def test_the_keys_poll_never_waits_for_the_ledger_writer(tmp_path: Path) -> None:
    """The poll reads the version on a read-only connection of its own: while the ledger's
    writer is busy (a long batch, a write waiting for a lock another process holds) and
    while another process holds the write lock, it answers at once (WAL: reads never wait
    for a write), and it sees a change another connection commits."""
    path = str(tmp_path / "ledger.db")
    serving = open_backend(path)
    await serving.open()
    other = sqlite3.connect(path, isolation_level=None)
    gate = threading.Event()
    writer = await serving._connect()  # type: ignore[attr-defined]  # the ledger's writer
    busy = asyncio.ensure_future(writer._execute(gate.wait, 10))  # its thread, held busy
    try:
        v0 = await asyncio.wait_for(serving.keys_version(), 5)
        other.execute("BEGIN IMMEDIATE")  # another process takes the write lock
        other.execute("UPDATE tb_keys_version SET version = version + 1")
        assert await asyncio.wait_for(serving.keys_version(), 5) == v0  # not committed
        other.execute("COMMIT")
        assert await asyncio.wait_for(serving.keys_version(), 5) == v0 + 1
        assert not busy.done()  # all of it while the writer's thread was busy
    finally:
        gate.set()
        await busy
        other.close()
        await serving.aclose()
