"""The PostgreSQL ledger: PostgreSQL restarted mid-traffic (rows spooled, replayed exactly
once), an old schema migrated in place (roll-up built from its rows), and the commands
(report, calls, reprice) on it."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from proxy import state
from proxy.admission import Admission
from proxy.admission.budgets import BudgetCheck, FleetBudgets
from proxy.admission.rate_fleet import FleetRates
from proxy.admission.rates import RateCheck
from proxy.backends import open_backend
from proxy.backends.postgres import migrate
from proxy.backends.schema import PG_MIGRATIONS
from proxy.cli import main
from proxy.config import BudgetConfig, RateLimitConfig
from proxy.dialects import PROVIDERS
from proxy.estimate import Estimator
from proxy.pricing import PriceBook
from proxy.record import COLUMNS
from proxy.sinks.ledger import Ledger
from proxy.tasks import spawn
from tests.admission.test_rates import call, config
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
        await ledger.handle(make_record(call_id="new", agent="old", service_tier="flex",
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
            await ledger.handle(make_record(
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
            await ledger.handle(make_record(
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
            await ledger.handle(make_record(call_id=f"s{i}", agent=f"a{i % 2}",
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


async def test_reservations_settle_with_the_row_and_expire_with_their_replica(
        pg_url: str) -> None:
    from proxy.backends.postgres import PostgresBackend

    b = PostgresBackend(pg_url)
    await b.open()
    try:
        day = "2026-11-30T00:00:00.000Z"
        await b.define_budgets([("cap", "day", {"agent": "bot"}, day)])
        for replica in ("r1", "r2"):
            await b.heartbeat(replica, 0)
        limit, worst = [Decimal("1.00")], Decimal("0.40")
        assert await b.reserve(["cap"], limit, [day], "c1", worst, "r1") is None
        assert await b.reserve(["cap"], limit, [day], "c2", worst, "r1") is None
        assert await b.reserve(["cap"], limit, [day], "c3", worst, "r2") == "cap"  # 1.20 > 1
        # c1 ends costing 0.10: its row releases the reservation and charges the budget
        await b.write([make_record(call_id="c1", agent="bot", cost_usd=Decimal("0.10"),
                                   started_at="2026-11-30T09:00:00.000Z").to_row()])
        assert (await b.budget_state([("cap", day)]))["cap"] == (Decimal("0.1"),
                                                                  Decimal("0.40"))
        assert await b.reserve(["cap"], limit, [day], "c3", worst, "r2") is None
        assert await b.reserve(["cap"], limit, [day], "c4", worst, "r2") == "cap"
        # r1 dies (no heartbeat for longer than STALE_SECONDS): c2's reservation goes
        pool = await b._get_pool()
        await pool.execute("UPDATE tb_replica SET seen_at = now() - interval '1 minute' "
                           "WHERE id = 'r1'")
        assert await b.reserve(["cap"], limit, [day], "c4", worst, "r2") is None
        spent, held = (await b.budget_state([("cap", day)]))["cap"]
        assert (spent, held) == (Decimal("0.1"), Decimal("0.80"))
        # a row outside the budget's match is not charged; the next window starts at zero
        await b.write([make_record(call_id="x", agent="other", cost_usd=Decimal("5"),
                                   started_at="2026-11-30T10:00:00.000Z").to_row(),
                       make_record(call_id="y", agent="bot", cost_usd=Decimal("0.25"),
                                   started_at="2026-12-01T00:00:01.000Z").to_row()])
        assert (await b.budget_state([("cap", day)]))["cap"][0] == Decimal("0.1")
        assert (await b.budget_state([("cap", "2026-12-01T00:00:00.000Z")]))["cap"][0] == \
            Decimal("0.25")
    finally:
        await b.aclose()


async def test_a_dropped_calls_holds_leave_the_shared_ledger(pg_url: str) -> None:
    """A call whose record was dropped (the recorder's queue full) never writes the row
    that would settle it: its budget reservation is deleted and its rate-limit event
    settled as never answered (still a request: 0 tokens, $0), in the background."""
    from proxy.backends.postgres import PostgresBackend

    b = PostgresBackend(pg_url)
    await b.open()
    try:
        day = "2026-11-30T00:00:00.000Z"
        await b.define_budgets([("cap", "day", {"agent": "bot"}, day)])
        await b.heartbeat("r1", 0)
        pool = await b._get_pool()
        # one round trip: a 10-a-minute limit and the budget; 500 tokens and $0.40 held
        got = json.loads(await pool.fetchval(
            "SELECT tb_admit(ARRAY['cap'], ARRAY[1.00], ARRAY[$1], 'c1', 0.40, 'r1', 30, "
            "ARRAY['rpm'], ARRAY[10]::bigint[], ARRAY[NULL]::bigint[], "
            "ARRAY[NULL]::numeric[], ARRAY[NULL]::numeric[], 500, 0.40)", day))
        assert "refused" not in got and "budget" not in got
        check = BudgetCheck([BudgetConfig("cap", {"agent": "bot"}, 1.0, "day", "block")])
        check.store = FleetBudgets(b)
        check.release("c1")

        async def held() -> tuple[Any, ...]:
            return (await pool.fetchval("SELECT count(*) FROM tb_reservation"),
                    tuple(await pool.fetchrow("SELECT count(*), sum(tokens), sum(usd) "
                                              "FROM tb_rate_event")))
        assert await held() in ((1, (1, 500, Decimal("0.40"))), (0, (1, 0, 0)))
        for _ in range(200):  # 10 s at most
            if await held() == (0, (1, 0, 0)):
                break
            await asyncio.sleep(0.05)
        assert await held() == (0, (1, 0, 0))
    finally:
        await b.aclose()


async def test_a_row_committing_mid_reserve_is_counted_once_never_in_neither(
        pg_url: str) -> None:
    """A call's row moves its cost from held to spent while another call is being reserved:
    the reserve must see it in one place or the other. The test makes the row commit
    between the reserve's reading of the budget's spend and its reading of its holds: it
    wraps `tb_budget_spent` (in this test's database only) so it first waits on an advisory
    lock the test holds, and writes the row while the reserve waits there."""
    from proxy.backends.postgres import PostgresBackend

    b = PostgresBackend(pg_url)
    await b.open()
    gate = await asyncpg.connect(pg_url)
    reserver = None
    try:
        day = "2026-11-30T00:00:00.000Z"
        await b.define_budgets([("race", "day", {"agent": "race"}, day)])
        await b.heartbeat("r1", 0)
        assert await b.reserve(["race"], [Decimal("1.00")], [day], "a", Decimal("0.60"),
                               "r1") is None
        await gate.execute("""
            ALTER FUNCTION tb_budget_spent(TEXT, TEXT) RENAME TO tb_budget_spent_unwrapped;
            CREATE FUNCTION tb_budget_spent(p_name TEXT, p_start TEXT) RETURNS NUMERIC
            LANGUAGE plpgsql STABLE AS $$
            BEGIN
              PERFORM pg_advisory_lock_shared(4242);
              PERFORM pg_advisory_unlock_shared(4242);
              RETURN tb_budget_spent_unwrapped(p_name, p_start);
            END $$;""")
        await gate.execute("SELECT pg_advisory_lock(4242)")
        reserver = await asyncpg.connect(pg_url)
        # call b wants 0.60 of the 1.00 while call a (0.60 held) is being written
        pending = spawn(reserver.fetchval(
            "SELECT tb_reserve(ARRAY['race'], ARRAY[1.00], ARRAY[$1], 'b', 0.60, 'r1', 30)",
            day), name="reserve-b")

        for _ in range(200):  # until the reserve waits on the gate (10 s at most)
            if await gate.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                   " AND objid = 4242 AND NOT granted"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the reserve never reached the gate")
        # call a ends costing 0.60: its row releases a's hold and charges the budget
        await b.write([make_record(call_id="a", agent="race", cost_usd=Decimal("0.60"),
                                   started_at="2026-11-30T09:00:00.000Z").to_row()])
        assert tuple(await gate.fetchrow("SELECT tb_budget_spent_unwrapped('race', $1), "
                                         "tb_budget_held('race', $1)", day)) == (
            Decimal("0.60"), 0)
        await gate.execute("SELECT pg_advisory_unlock(4242)")
        # 0.60 spent + 0.60 for b = 1.20 > 1.00: b is refused (read in two snapshots, a's
        # 0.60 was in neither, and b was admitted)
        assert await asyncio.wait_for(pending, 10) == "race"
    finally:
        if reserver is not None:
            await reserver.close()
        await gate.close()
        await b.aclose()


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


class WireCount:
    """A TCP relay between the ledger and PostgreSQL that counts the client's round trips:
    each `Sync` (extended protocol) or `Query` (simple protocol) message waits for the
    server's ReadyForQuery."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.trips = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       count: bool) -> None:
            buf, typed = b"", False
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    if count:
                        buf += data
                        while True:  # whole messages: untyped ones until the startup
                            if not typed:
                                if len(buf) < 8:
                                    break
                                n = int.from_bytes(buf[:4], "big")
                                code = int.from_bytes(buf[4:8], "big")
                                typed = code not in (80877103, 80877104)  # SSL, GSS asks
                                buf = buf[n:]
                                continue
                            if len(buf) < 5:
                                break
                            n = int.from_bytes(buf[1:5], "big")
                            if len(buf) < n + 1:
                                break
                            self.trips += buf[:1] in (b"S", b"Q")
                            buf = buf[n + 1:]
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_w, True), pipe(up_r, writer, False))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_admission_is_one_round_trip_with_a_budget_and_a_rate_limit(
        pg_url: str, estimator: Estimator) -> None:
    """A call a blocking budget and a rate limit both match is decided in one round trip
    (`tb_admit`), and so is one only a rate limit matches; settling costs no trip of its
    own (the row write does it)."""
    server_port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
    wire = WireCount(server_port)
    port = await wire.start()
    backend = open_backend(pg_url.replace(f":{server_port}/", f":{port}/"))
    await backend.open()
    try:
        assert backend.fleet is not None
        await backend.fleet.heartbeat("r1", 0)
        budgets = BudgetCheck([BudgetConfig("cap", {"agent": "bot"}, 100.0, "day", "block")])
        fleet_budgets = FleetBudgets(backend.fleet)
        fleet_budgets.replica = "r1"
        await budgets.open(fleet_budgets)
        rates = RateCheck([RateLimitConfig("rpm", {}, requests_per_minute=1000)])
        rates.open(FleetRates(backend.fleet))
        cfg = config(Path("/nonexistent"))
        both = Admission((rates, budgets), PriceBook(cfg.prices), estimator)
        assert await both.admit(*call(cfg, "warm-1")) is None  # statements prepared
        assert await both.admit(*call(cfg, "warm-2", agent="other")) is None
        before = wire.trips
        for i in range(20):
            assert await both.admit(*call(cfg, f"b{i}")) is None  # budget + rate limit
            assert await both.admit(*call(cfg, f"r{i}", agent="other")) is None  # rate only
        assert wire.trips - before == 40
    finally:
        await backend.aclose()
        wire.close()
