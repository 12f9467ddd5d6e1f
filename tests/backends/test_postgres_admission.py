"""Admission's store on the fleet's ledger (`proxy.backends.postgres_admission`):
reservations settle with their row and expire with their replica, a dropped call's holds
leave, a row committing mid-reserve is counted once, and a call a budget and a rate limit
both match is decided in one round trip."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from proxy.admission import Admission
from proxy.admission.budgets import BudgetCheck, FleetBudgets
from proxy.admission.rate_fleet import FleetRates
from proxy.admission.rates import RateCheck
from proxy.backends import open_backend
from proxy.config import BudgetConfig, RateLimitConfig
from proxy.estimate import Estimator
from proxy.pricing import PriceBook
from proxy.tasks import spawn
from tests.admission.test_rates import call, config
from tests.factories import make_record


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
