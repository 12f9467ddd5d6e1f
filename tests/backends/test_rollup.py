"""The hourly roll-up gives exactly the totals of the raw rows, on random data, for any
range (edges cut anywhere in an hour), grouping and filter, on both backends; retention
deletes raw rows without changing what the roll-up answers."""

from __future__ import annotations

import random
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from proxy.backends import open_backend, parse_url
from proxy.backends.schema import (
    MEASURES,
    PG_MIGRATIONS,
    ROLLUPS,
    SQLITE_MIGRATIONS,
    rollup_upsert,
)
from proxy.record import COLUMNS
from proxy.sinks.ledger import Ledger
from tests.factories import make_record

COUNTERS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
            "reasoning_tokens", "total_tokens")
T0 = datetime(2026, 10, 1, 0, 0, tzinfo=UTC)


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def random_records(rng: random.Random, n: int) -> list[Any]:
    out = []
    for i in range(n):
        t = T0 + timedelta(milliseconds=rng.randrange(0, 6 * 86400 * 1000))
        if rng.random() < 0.05:  # exactly on an hour
            t = t.replace(minute=0, second=0, microsecond=0)
        source = rng.choice(["reported", "reported", "estimated", "partial", "none", "pending"])
        priced = rng.random() < 0.8 and source != "pending"
        toks = {c: rng.choice([None, rng.randrange(0, 5000)]) for c in COUNTERS}
        out.append(make_record(
            call_id=f"r{i}", started_at=ts(t), ended_at=ts(t),
            agent=rng.choice([None, "ana", "bob", "cy"]),
            session=rng.choice([None, "s1", "s2"]),
            model=rng.choice([None, "gpt-4o", "claude-x", "gemini-y"]),
            upstream=rng.choice(["openai", "anthropic"]),
            operation=rng.choice(["chat", "embeddings"]),
            end_user=rng.choice([None, "u1"]), client=rng.choice([None, "sdk"]),
            outcome=rng.choice(["ok", "ok", "upstream_error", "client_abort"]),
            usage_source=source, tags={"team": rng.choice(["red", "blue"])},
            cost_usd=Decimal(rng.randrange(0, 10**7)) / 10**10 if priced else None,
            # the list price's cost (pricing.adjustments): NULL exactly when cost_usd is
            list_cost_usd=Decimal(rng.randrange(0, 10**7)) / 10**10 if priced else None,
            **toks))
    return out


def expected(records: list[Any], group_by: list[str], since: str | None, until: str | None,
             filters: dict[str, str]) -> dict[Any, dict[str, Any]]:
    """By hand: sums over the raw records."""
    def key(r: Any) -> tuple[Any, ...]:
        out = []
        for k in group_by:
            if k == "day":
                out.append(r.started_at[:10])
            elif k == "month":
                out.append(r.started_at[:7])
            elif k.startswith("tag:"):
                out.append(r.tags.get(k[4:]))
            else:
                out.append(getattr(r, k))
        return tuple(out)

    groups: dict[Any, dict[str, Any]] = defaultdict(lambda: {
        "calls": 0, **dict.fromkeys(COUNTERS, 0), "cost": Decimal(0), "priced": 0,
        "list_cost": Decimal(0),
        "unpriced_calls": 0, "estimated_calls": 0, "pending_calls": 0})
    for r in records:
        if since and r.started_at < since or until and r.started_at >= until:
            continue
        if any(getattr(r, k) != v for k, v in filters.items()):
            continue
        g = groups[key(r)]
        g["calls"] += 1
        for c in COUNTERS:
            g[c] += getattr(r, c) or 0
        if r.cost_usd is not None:
            g["cost"] += r.cost_usd
            g["list_cost"] += r.list_cost_usd
            g["priced"] += 1
        elif r.usage_source == "pending":  # not known yet: neither priced nor unpriced
            g["pending_calls"] += 1
        elif r.outcome == "ok" or r.usage_source != "none":  # succeeded, or carried usage
            g["unpriced_calls"] += 1
        g["estimated_calls"] += r.usage_source in ("estimated", "partial")
    return groups


def check(result: dict[str, Any], want: dict[Any, dict[str, Any]], group_by: list[str]) -> None:
    got = {tuple(g[k] for k in group_by): g for g in result["groups"]} if group_by else \
        ({(): result["totals"]} if result["totals"]["calls"] else {})
    assert set(got) == set(want)
    for k, w in want.items():
        g = got[k]
        assert g["calls"] == w["calls"], k
        for c in (*COUNTERS, "unpriced_calls", "estimated_calls", "pending_calls"):
            assert g[c] == w[c], (k, c)
        assert g["cost_usd"] == (float(w["cost"]) if w["priced"] else None), k
        assert g["list_cost_usd"] == (float(w["list_cost"]) if w["priced"] else None), k


@asynccontextmanager
async def written(target: str, records: list[Any]) -> AsyncIterator[Ledger]:
    """The ledger at `target` with `records` in it, flushed; closed on leaving."""
    ledger = Ledger(target, flush_seconds=0.01)
    await ledger.open()
    try:
        for r in records:
            ledger.observe(r)
        await ledger.flush()
        yield ledger
    finally:
        await ledger.aclose()


async def write(target: str, records: list[Any]) -> None:
    """`records` in the ledger at `target`, flushed, the ledger closed."""
    async with written(target, records):
        pass


async def test_rollup_equals_raw_rows_on_random_data(target: str) -> None:
    rng = random.Random(12)
    records = random_records(rng, 3000)
    ledger = Ledger(target, flush_seconds=0.01)
    await ledger.open()
    try:
        for r in records:
            ledger.observe(r)
        for r in rng.sample(records, 200):  # replays and duplicates count once
            ledger.observe(r)
        await ledger.flush()
        backend = ledger.backend
        keys = ["agent", "model", "upstream", "operation", "end_user", "client", "outcome",
                "day", "month", "session", "tag:team"]
        span = 6 * 86400 * 1000
        for _ in range(40):
            group_by = rng.sample(keys, rng.choice([0, 1, 2]))
            a = T0 + timedelta(milliseconds=rng.randrange(-3600_000, span))
            b = a + timedelta(milliseconds=rng.randrange(1, span))
            if rng.random() < 0.3:
                a = a.replace(minute=0, second=0, microsecond=0)
            since = rng.choice([None, ts(a)])
            until = rng.choice([None, ts(b)])
            filters = rng.choice([{}, {"agent": "ana"}, {"outcome": "ok"},
                                  {"session": "s1"}, {"model": "gpt-4o", "client": "sdk"}])
            result = await backend.usage(group_by, since, until, filters)
            check(result, expected(records, group_by, since, until, filters), group_by)

        # retention: raw rows before a whole hour go; roll-up answers stay the same
        ledger.retention_days = 2.5
        now = T0 + timedelta(days=5)
        assert await ledger.purge(now=now) > 0
        cutoff = ts((now - timedelta(days=2.5)).replace(minute=0, second=0, microsecond=0))
        assert (await backend.calls(None, cutoff, {}, 10)) == []
        for group_by in ([], ["agent"], ["day", "model"]):
            check(await backend.usage(group_by, None, None, {}),
                  expected(records, group_by, None, None, {}), group_by)
    finally:
        await ledger.aclose()


async def test_budget_spend_reads_hours_and_tags_alike(target: str) -> None:
    records = random_records(random.Random(3), 500)
    await write(target, records)
    backend = open_backend(target)
    try:
        since = "2026-10-03T00:00:00.000Z"
        for match in ({"agent": "ana"}, {"team": "red"}, {"session": "s2", "model": "gpt-4o"},
                      {}):
            want = sum((r.cost_usd for r in records if r.cost_usd is not None
                        and r.started_at >= since
                        and all((getattr(r, k) if k != "team" else r.tags.get(k)) == v
                                for k, v in match.items())), Decimal(0))
            assert await backend.spend(match, since) == want, match
    finally:
        await backend.aclose()


async def _old_ledger(target: str, sql: str, before: str) -> None:
    """Make the ledger look like one from before the migration named `before`: run `sql`
    (which undoes it and those after it) and set its schema version back to before it."""
    if not parse_url(target).local:
        version = [name for name, _ in PG_MIGRATIONS].index(before)
        db = await asyncpg.connect(target)
        try:
            await db.execute(sql)
            await db.execute("DELETE FROM tb_schema WHERE version > $1", version)
        finally:
            await db.close()
        return
    conn = sqlite3.connect(target)
    version = [name for name, _ in SQLITE_MIGRATIONS].index(before)
    try:
        conn.executescript(sql)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    finally:
        conn.close()


async def test_an_ok_call_without_a_cost_is_unpriced_whatever_its_usage(target: str) -> None:
    at = {"started_at": "2026-10-02T10:00:00.000Z", "ended_at": "2026-10-02T10:00:01.000Z"}
    none = dict.fromkeys(COUNTERS)
    records = [
        # audio transcriptions the proxy cannot read: no usage, no cost, succeeded
        *(make_record(call_id=f"audio{i}", model="whisper-1", operation="audio",
                      usage_source="none", cost_usd=None, **none, **at) for i in range(3)),
        make_record(call_id="priced", **at),
        make_record(call_id="mystery", model="mystery-7b", cost_usd=None, **at),
        make_record(call_id="cut", model="mystery-7b", cost_usd=None, outcome="client_aborted",
                    usage_source="partial", **at),
        make_record(call_id="refused", model="whisper-1", operation="audio", status_code=401,
                    outcome="upstream_error", usage_source="none", cost_usd=None, **none,
                    **at),
    ]
    async with written(target, records) as ledger:
        # 3 audio + the ok mystery call + the aborted call that carried usage
        for since in (None, "2026-10-02T10:00:00.500Z"):  # roll-up, then raw rows
            got = await ledger.backend.usage(["model"], since and "2026-10-02T09:30:00.000Z",
                                             since, {})
            by_model = {g["model"]: g["unpriced_calls"] for g in got["groups"]}
            assert by_model == {"whisper-1": 3, "mystery-7b": 2, "gpt-4o": 0}

    # A ledger whose roll-ups were built by the old rule (usage required): its ok audio
    # calls counted 0. Opening it migrates the measure to what its raw rows say. (It is
    # from before the pending count too, which came after.)
    await _old_ledger(target, "".join(
        f"UPDATE {t} SET unpriced_calls = 0 WHERE model = 'whisper-1';\n"
        for t in ("llm_usage_hourly", "llm_usage_daily"))
        + "ALTER TABLE llm_usage DROP COLUMN quota;\n"  # later migrations'
        + "ALTER TABLE llm_usage DROP COLUMN list_cost_usd;\n"
        + "DROP INDEX llm_usage_consumer_key;\nALTER TABLE llm_usage DROP COLUMN consumer_key;\n"
        + "DROP TABLE tb_keys;\nDROP TABLE tb_keys_version;\n"
        + "".join(f"ALTER TABLE {t} DROP COLUMN pending_calls;\n"
                  f"ALTER TABLE {t} DROP COLUMN list_cost_units;\n"
                  for t in ("llm_usage_hourly", "llm_usage_daily")),
        before="unpriced: every ok call without a cost, whatever its usage")
    backend = open_backend(target)
    await backend.open()
    try:
        got = await backend.usage([], None, None, {})
        assert got["totals"]["unpriced_calls"] == 5
        assert got["totals"]["calls"] == 7
    finally:
        await backend.aclose()


async def test_a_ledger_from_before_list_costs_gets_them_from_its_costs(target: str) -> None:
    """Rows written before pricing.adjustments were charged the list price: migrating gives
    each row list_cost_usd = cost_usd, and each roll-up row list_cost_units = cost_units,
    exactly, also for hours whose raw rows retention already deleted."""
    at = {"started_at": "2026-10-02T10:00:00.000Z", "ended_at": "2026-10-02T10:00:01.000Z"}
    records = [
        make_record(call_id="a", cost_usd=Decimal("0.0012345678"), **at),
        make_record(call_id="b", model="mystery-7b", cost_usd=None, **at),
        make_record(call_id="c", cost_usd=Decimal("0.5"), **at),
        make_record(call_id="gone", cost_usd=Decimal("0.25"),
                    started_at="2026-10-01T08:00:00.000Z", ended_at="2026-10-01T08:00:01.000Z"),
    ]
    await write(target, records)
    await _old_ledger(target, "DELETE FROM llm_usage WHERE call_id = 'gone';\n"  # retention
                      "ALTER TABLE llm_usage DROP COLUMN list_cost_usd;\n"
                      # a later migration's
                      "DROP INDEX llm_usage_consumer_key;\n"
                      "ALTER TABLE llm_usage DROP COLUMN consumer_key;\n"
                      "DROP TABLE tb_keys;\nDROP TABLE tb_keys_version;\n"
                      + "".join(f"ALTER TABLE {t} DROP COLUMN list_cost_units;\n"
                                for t in ("llm_usage_hourly", "llm_usage_daily")),
                      before="list cost: the list price beside the charged cost "
                             "(pricing.adjustments)")
    backend = open_backend(target)
    await backend.open()
    try:
        rows = {r["call_id"]: r for r in await backend.calls(None, None, {}, 10)}
        assert {k: (r["list_cost_usd"], r["cost_usd"]) for k, r in rows.items()} == {
            "a": (0.0012345678, 0.0012345678), "b": (None, None), "c": (0.5, 0.5)}
        # whole days (the roll-up, with the deleted row's day) and a raw-row range
        got = await backend.usage([], None, None, {})
        assert (got["totals"]["list_cost_usd"], got["totals"]["cost_usd"]) == \
            (0.7512345678, 0.7512345678)
        got = await backend.usage([], "2026-10-02T09:59:00.000Z", "2026-10-02T10:01:00.000Z",
                                  {})
        assert (got["totals"]["list_cost_usd"], got["totals"]["cost_usd"]) == \
            (0.5012345678, 0.5012345678)
    finally:
        await backend.aclose()


async def test_a_row_without_a_list_cost_beside_its_cost_reads_as_its_cost(
        target: str) -> None:
    """A replica from before pricing.adjustments writes no list_cost_usd into a ledger
    another replica migrated: such a row was charged its list price, so it reads back, rolls
    up and sums as list cost = cost (an unpriced row stays NULL)."""
    at = {"started_at": "2026-10-02T10:00:00.000Z", "ended_at": "2026-10-02T10:00:01.000Z"}
    records = [make_record(call_id="old", cost_usd=Decimal("0.5"), list_cost_usd=None, **at),
               make_record(call_id="none", model="mystery-7b", cost_usd=None,
                           list_cost_usd=None, **at)]
    async with written(target, records) as ledger:
        backend = ledger.backend
        rows = {r["call_id"]: r for r in await backend.calls(None, None, {}, 10)}
        assert {k: (r["list_cost_usd"], r["cost_usd"]) for k, r in rows.items()} == {
            "old": (0.5, 0.5), "none": (None, None)}
        # the whole day (the roll-up), and a range inside the hour (the raw rows)
        for since, until in ((None, None),
                             ("2026-10-02T09:59:00.000Z", "2026-10-02T10:01:00.000Z")):
            got = await backend.usage(["model"], since, until, {})
            assert (got["totals"]["list_cost_usd"], got["totals"]["cost_usd"]) == (0.5, 0.5)


async def test_reprice_gives_an_old_replicas_row_its_list_cost_in_the_rollup(
        target: str) -> None:
    """A replica from before list costs wrote a row (list_cost_usd NULL) and rolled it up
    with its own measures (no list_cost_units): reprice takes out what it added (no list
    cost) and adds the row's new list cost, so the roll-up's list cost is right after."""
    ledger = Ledger(target, flush_seconds=0.01)
    await ledger.open()  # the latest schema
    await ledger.aclose()
    record = make_record(call_id="old", cost_usd=Decimal("0.5"), list_cost_usd=None,
                         started_at="2026-10-02T10:00:00.000Z",
                         ended_at="2026-10-02T10:00:01.000Z")
    cols = [c for c in COLUMNS if c not in ("list_cost_usd", "consumer_key")]  # its columns
    values = [v for c, v in zip(COLUMNS, record.to_row(), strict=True) if c in cols]
    flavor = "sqlite" if parse_url(target).local else "postgresql"
    old = [rollup_upsert(flavor, "llm_usage", "WHERE call_id = 'old'", table=t,
                         measures=MEASURES[:-1]) for t, _, _ in ROLLUPS]  # its roll-up
    if flavor == "sqlite":
        conn = sqlite3.connect(target)
        try:
            conn.execute(f"INSERT INTO llm_usage ({', '.join(cols)}) "
                         f"VALUES ({', '.join('?' * len(cols))})", values)
            for sql in old:
                conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
    else:
        db = await asyncpg.connect(target)
        try:
            await db.execute(f"INSERT INTO llm_usage ({', '.join(cols)}) VALUES "
                             f"({', '.join(f'${i}' for i in range(1, len(cols) + 1))})",
                             *values)
            for sql in old:
                await db.execute(sql)
        finally:
            await db.close()
    backend = open_backend(target)
    await backend.open()
    try:
        got = await backend.usage([], None, None, {})  # whole days: the roll-up
        assert (got["totals"]["list_cost_usd"], got["totals"]["cost_usd"]) == (0.0, 0.5)
        await backend.reprice(None, None, lambda rows: [(0.5, 0.5, "genai-prices", "old")],
                              ["call_id"], False)
        got = await backend.usage([], None, None, {})
        assert (got["totals"]["list_cost_usd"], got["totals"]["cost_usd"]) == (0.5, 0.5)
    finally:
        await backend.aclose()
