"""The quota board: the latest reading per account wins (a late-ending call's older reading
does not), a window the latest reading drops leaves the gauge, and the accounts are capped."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from proxy.quota import Quota, QuotaWindow
from proxy.sinks.quota import QuotaBoard
from tests.factories import make_record

NAME = "tokenbooth_provider_quota_utilization"


def reading(seen: float, **windows: float | None) -> Quota:
    return Quota({"anthropic-ratelimit-unified-status": "allowed"},
                 tuple(QuotaWindow(n, u, 1785182400.0, "allowed") for n, u in windows.items()),
                 seen, "allowed")


def gauge(board: QuotaBoard) -> dict[tuple[str, str, str], float]:
    return {(s.labels["upstream"], s.labels["account"], s.labels["window"]): s.value
            for fam in board.gauge.collect() for s in fam.samples if s.name == NAME}


async def test_the_latest_reading_wins_whatever_order_the_calls_end_in() -> None:
    board = QuotaBoard(CollectorRegistry())
    board.observe(make_record(call_id="a", upstream="anthropic", key_id="k_1",
                                   quota=reading(100.0, **{"5h": 0.2, "7d": 0.5})))
    # a stream that started earlier (its head came at t=90) ends after `a`
    board.observe(make_record(call_id="old", upstream="anthropic", key_id="k_1",
                                   quota=reading(90.0, **{"5h": 0.1, "7d": 0.4})))
    assert gauge(board) == {("anthropic", "k_1", "5h"): 0.2, ("anthropic", "k_1", "7d"): 0.5}
    # a newer reading without the 7d window: it leaves the gauge
    board.observe(make_record(call_id="b", upstream="anthropic", key_id="k_1",
                                   quota=reading(110.0, **{"5h": 0.25, "7d": None})))
    assert gauge(board) == {("anthropic", "k_1", "5h"): 0.25}
    (acct,) = board.snapshot()
    assert (acct["upstream"], acct["account"], acct["seen_at"]) == ("anthropic", "k_1", 110.0)
    assert [(w["name"], w["utilization"]) for w in acct["windows"]] == [("5h", 0.25),
                                                                      ("7d", None)]


async def test_records_without_windows_change_nothing_and_accounts_are_capped() -> None:
    board = QuotaBoard(CollectorRegistry(), max_accounts=2)
    board.observe(make_record(call_id="n", quota=None))
    board.observe(make_record(call_id="e", quota=Quota({"x-ratelimit-x": "1"}, (), 5.0)))
    assert board.snapshot() == [] and gauge(board) == {}
    for i in range(4):
        board.observe(make_record(call_id=f"k{i}", upstream="openai", key_id=f"k_{i}",
                                       quota=reading(float(i), requests=0.1 * i)))
    board.observe(make_record(call_id="nokey", upstream="openai", key_id=None,
                                   quota=reading(9.0, requests=0.5)))
    assert [a["account"] for a in board.snapshot()] == ["k_0", "k_1"]
    assert board.dropped == 3
    # a known account still moves
    board.observe(make_record(call_id="k1b", upstream="openai", key_id="k_1",
                                   quota=reading(20.0, requests=0.9)))
    assert gauge(board)[("openai", "k_1", "requests")] == 0.9
    await board.aclose()


async def test_an_account_without_a_credential_is_none() -> None:
    board = QuotaBoard(CollectorRegistry())
    board.observe(make_record(call_id="x", upstream="groq", key_id=None,
                                   quota=reading(1.0, tokens=0.3)))
    assert gauge(board) == {("groq", "none", "tokens"): 0.3}
