"""Admission's CPU per call on a SQLite ledger: what a call pays for a consumer key's own
limits, a rate limit and a blocking budget that match it (by the key, as a key-like
`match`), against no admission at all.

Each call runs what the proxy runs for it: `Admission.decide()` (the input estimate, the
rate limits' sliding windows, the budget's reservation), the rate-limit headers of its
response, and, `--inflight` calls later, its record settling the reservations (the budgets
sink's `handle`). Records and request documents are built before the clock starts; the
request's JSON parse is not counted (the proxy does it with or without admission).

    python -m bench.admission_bench [--calls 20000] [--inflight 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bench.records import bench_record
from proxy.admission import Admission
from proxy.admission.budgets import BudgetCheck, LocalBudgets
from proxy.admission.rate_headers import headers_for
from proxy.admission.rates import RateCheck
from proxy.backends import open_backend
from proxy.config import parse
from proxy.dialects import DIALECTS
from proxy.estimate import Estimator
from proxy.keys import ConsumerKey, KeyLimits
from proxy.pricing import PriceBook
from proxy.record import CallFacts
from proxy.routing import resolve
from proxy.sinks.budgets import Budgets

MESSAGES = [
    {"role": "system", "content": "You are a careful assistant. Answer briefly and cite the "
                                  "section of the report you rely on."},
    {"role": "user", "content": "Here is the quarterly report: revenue grew 12% to $4.1M, "
                                "costs were flat, two new regions opened, churn fell to 3%."},
    {"role": "assistant", "content": "Noted. What would you like to know about it?"},
    {"role": "user", "content": "Summarise it in one line for the board."},
]
KEY = ConsumerKey("k-bench", "team-bench", limits=KeyLimits(requests_per_minute=10**9,
                                                            tokens_per_minute=10**12))


def config(path: str, rate: bool, budget: bool) -> Any:
    raw: dict[str, Any] = {
        "ledger": {"path": path},
        "pricing": {"models": {"bench-model": {"input": 1.0, "output": 2.0}}},
    }
    if rate:
        raw["rate_limits"] = [{"name": "team-rate", "match": {"key": KEY.id},
                               "requests_per_minute": 10**9, "tokens_per_minute": 10**12,
                               "usd_per_hour": 10**9}]
    if budget:
        raw["budgets"] = [{"name": "team-budget", "match": {"key": KEY.id},
                           "limit_usd": 10**9, "window": "month", "action": "block"}]
    return parse(raw, env={})


async def one_round(label: str, path: str, n: int, inflight: int, est: Estimator,
                    rate: bool, budget: bool, key: bool) -> float:
    """CPU µs per call for `n` calls (the loop's own cost included; see `empty`)."""
    cfg = config(path, rate, budget)
    backend = open_backend(path)
    await backend.open()
    budget_check = BudgetCheck(cfg.budgets)
    await budget_check.open(LocalBudgets(backend))
    rate_check = RateCheck(cfg.rate_limits)
    sink = Budgets(budget_check, CollectorRegistry(), rates=rate_check)
    admission = Admission((rate_check, budget_check), PriceBook(cfg.prices), est)
    route = resolve(cfg.upstreams["openai"], "POST", "v1/chat/completions")
    assert route.parser is not None
    dialect = DIALECTS[route.parser]
    doc = {"model": "bench-model", "max_tokens": 300, "messages": MESSAGES}
    info = dialect.request_info(doc)
    facts, records = [], []
    for i in range(n):
        f = CallFacts(f"call-{label}-{i:08d}", 0.0, 0.0, "openai", "openai", route.operation,
                      "POST", "/openai/v1/chat/completions", parser=route.parser,
                      request_body=b"{}", tags={"agent": "bench"},
                      key=KEY if key or rate or budget else None)
        f.request_doc, f.request_info = doc, info
        facts.append(f)
        records.append(bench_record(call_id=f.call_id, model="bench-model",
                                    request_model="bench-model", agent="bench",
                                    cost_usd=Decimal("0.0006")))
    t0 = time.process_time_ns()
    for i in range(n):
        denied, view = await admission.decide(facts[i], route)
        if denied is not None:
            raise SystemExit(f"refused: {denied.message}")
        headers_for(view, "openai")
        if i >= inflight:
            sink.observe(records[i - inflight])
    t1 = time.process_time_ns()
    await backend.aclose()
    return (t1 - t0) / n / 1000


async def empty(n: int) -> float:
    """The loop alone: an await of a trivial coroutine per call."""
    async def nothing() -> None:
        return None
    t0 = time.process_time_ns()
    for _ in range(n):
        await nothing()
    return (time.process_time_ns() - t0) / n / 1000


CASES = [  # label, rate limit, budget, key limits
    ("budget only", False, True, False),
    ("rate limit only", True, False, False),
    ("key limits only", False, False, True),
    ("key + rate limit + budget", True, True, True),
]


async def main_async(n: int, inflight: int, rounds: int) -> None:
    est = Estimator()
    est.load()
    results: dict[str, list[float]] = {label: [] for label, *_ in CASES}
    loop_cost: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        for r in range(rounds):  # interleaved: the machine's drift hits every case alike
            loop_cost.append(await empty(n))
            for label, rate, budget, key in CASES:
                path = str(Path(d) / f"ledger-{r}-{len(results[label])}.db")
                results[label].append(await one_round(label.replace(" ", "-"), path, n,
                                                      inflight, est, rate, budget, key))
    base = statistics.median(loop_cost)
    print(f"admission CPU per call, {n} calls x {rounds} rounds, {inflight} in flight, "
          f"SQLite ledger (median; the loop's own {base:.2f} µs taken off):")
    for label, values in results.items():
        added = statistics.median(values) - base
        print(f"  {label:28s} {added:7.1f} µs added per call  "
              f"(rounds: {', '.join(f'{v - base:.1f}' for v in values)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--inflight", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    asyncio.run(main_async(a.calls, a.inflight, a.rounds))


if __name__ == "__main__":
    main()
