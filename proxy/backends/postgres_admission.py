"""Admission's store on the fleet's ledger: `PgAdmission` is the part of `PostgresBackend`
that defines the fleet's budgets, reserves a call's worst case against them, decides rate
limits, and reports and releases what they hold.

Budgets: admission calls `tb_reserve` (one round trip) which locks each matching budget,
drops reservations of replicas that stopped heartbeating, checks spend + reservations +
the call's worst case against the limit, and reserves. Spend per window lives in
`tb_budget_spend`, so every replica reads the same number.

Rate limits: when one matches, admission calls `tb_admit` instead (still one round trip),
which decides the rate limits' sliding windows (`tb_rate_event`) and then the budgets, and
reserves both or neither; the batch write (`postgres_sql.WRITE`) settles each row's
rate-limit reservations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from proxy.backends import query
from proxy.backends.postgres_sql import LOCK, pg
from proxy.backends.schema import COST_SCALE

__all__ = ["STALE_SECONDS", "PgAdmission"]

STALE_SECONDS = 30.0  # a replica silent this long has its reservations released


class PgAdmission:
    """`PostgresBackend`'s budgets and rate limits (a base of that class, nothing on its
    own)."""

    kind: str

    if TYPE_CHECKING:  # the backend's own (`PostgresBackend`)
        async def _get_pool(self) -> Any: ...

    async def define_budgets(self, budgets: Sequence[tuple[str, str, dict[str, str],
                                                           str | None]]) -> None:
        """(name, period, match, current window start) of each budget: new or changed ones
        get their current window's spend from the ledger, with writers held off meanwhile
        so no row is missed or counted twice."""
        pool = await self._get_pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK)
            for name, period, match, start in budgets:
                row = await conn.fetchrow("SELECT period, match FROM tb_budget WHERE name = $1",
                                          name)
                if row is not None and row["period"] == period and \
                        json.loads(row["match"]) == match:
                    continue
                await conn.execute(
                    "INSERT INTO tb_budget (name, period, match) VALUES ($1, $2, $3::jsonb) "
                    "ON CONFLICT (name) DO UPDATE SET period = $2, match = $3::jsonb",
                    name, period, json.dumps(match))
                await conn.execute("DELETE FROM tb_budget_spend WHERE budget = $1", name)
                if period.startswith("rolling:"):  # spend per hour: the window moves hourly
                    sql, args = query.spend_by_hour_sql(self.kind, match, start or "")
                    await conn.executemany(
                        "INSERT INTO tb_budget_spend (budget, window_start, spent) "
                        "VALUES ($1, $2, $3)",
                        [(name, r[0], Decimal(r[1] or 0) / COST_SCALE)
                         for r in await conn.fetch(pg(sql), *args)])
                    continue
                sql, args = query.spend_sql(self.kind, match, start)
                units = await conn.fetchval(pg(sql), *args)
                await conn.execute(
                    "INSERT INTO tb_budget_spend (budget, window_start, spent) "
                    "VALUES ($1, $2, $3)", name, start or "",
                    Decimal(units or 0) / COST_SCALE)

    async def reserve(self, names: Sequence[str], limits: Sequence[Decimal],
                      windows: Sequence[str], call_id: str, worst: Decimal,
                      replica: str) -> str | None:
        """One round trip: the name of the budget that refuses, or None (reserved)."""
        pool = await self._get_pool()
        result = await pool.fetchval(
            "SELECT tb_reserve($1::text[], $2::numeric[], $3::text[], $4, $5, $6, $7)",
            list(names), list(limits), list(windows), call_id, worst, replica, STALE_SECONDS)
        return None if result is None else str(result)

    # --- rate limits (issue 20, item 2) ---
    async def admit(self, budgets: tuple[Sequence[str], Sequence[Decimal], Sequence[str],
                                         Decimal],
                    rates: Sequence[Any], call_id: str, tokens: int, usd: Decimal,
                    replica: str) -> dict[str, Any]:
        """One round trip (`tb_admit`): the call's rate limits (`RateLimitConfig`s, sorted
        by name) and, if they admit, its budgets (name, limit, window start of each, and
        the call's worst case); both reserved or neither. The answer's `budget` names the
        budget that refused; `limits` holds each rate limit's figures."""
        names, limits, windows, worst = budgets
        pool = await self._get_pool()
        result = await pool.fetchval(
            "SELECT tb_admit($1::text[], $2::numeric[], $3::text[], $4, $5, $6, $7, "
            "$8::text[], $9::bigint[], $10::bigint[], $11::numeric[], $12::numeric[], "
            "$13, $14)",
            list(names), list(limits), list(windows), call_id, worst, replica, STALE_SECONDS,
            [r.name for r in rates], [r.requests_per_minute for r in rates],
            [r.tokens_per_minute for r in rates],
            [None if r.usd_per_minute is None else Decimal(repr(r.usd_per_minute))
             for r in rates],
            [None if r.usd_per_hour is None else Decimal(repr(r.usd_per_hour))
             for r in rates],
            tokens, usd)
        return dict(json.loads(result, parse_float=Decimal))  # exact, as the database has it

    async def rate_state(self, names: Sequence[str]
                         ) -> dict[str, tuple[int, int, Decimal, Decimal]]:
        """The fleet's window of each rate limit: requests, tokens and dollars of the last
        minute, dollars of the last hour."""
        pool = await self._get_pool()
        rows = await pool.fetch(
            "SELECT n.name, count(e.call_id) FILTER (WHERE e.at > now() - interval '60 s'), "
            "coalesce(sum(e.tokens) FILTER (WHERE e.at > now() - interval '60 s'), 0), "
            "coalesce(sum(e.usd) FILTER (WHERE e.at > now() - interval '60 s'), 0), "
            "coalesce(sum(e.usd) FILTER (WHERE e.at > now() - interval '3600 s'), 0) "
            "FROM unnest($1::text[]) AS n(name) "
            "LEFT JOIN tb_rate_event e ON e.rate_limit = n.name GROUP BY n.name",
            list(names))
        return {r[0]: (int(r[1]), int(r[2]), Decimal(r[3]), Decimal(r[4])) for r in rows}
    # --- end rate limits ---

    async def forget_call(self, call_id: str) -> None:
        """A call whose row will never be written (its record was dropped): its budget
        reservations released, its rate-limit events settled as never answered."""
        pool = await self._get_pool()
        await pool.execute("WITH gone AS (DELETE FROM tb_reservation WHERE call_id = $1) "
                           "UPDATE tb_rate_event SET tokens = 0, usd = 0 WHERE call_id = $1",
                           call_id)

    async def budget_state(self, keys: Sequence[tuple[str, str]]
                           ) -> dict[str, tuple[Decimal, Decimal]]:
        """Fleet spend and open reservations of each (budget, window start)."""
        pool = await self._get_pool()
        rows = await pool.fetch(
            "SELECT k.budget, tb_budget_spent(k.budget, k.ws), tb_budget_held(k.budget, k.ws) "
            "FROM unnest($1::text[], $2::text[]) AS k(budget, ws)",
            [k[0] for k in keys], [k[1] for k in keys])
        return {r[0]: (Decimal(r[1]), Decimal(r[2])) for r in rows}
