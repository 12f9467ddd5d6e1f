"""Negotiated prices (`pricing.adjustments`) end to end, on both ledgers: real SDK calls
through the proxy to a fake provider, a 20 % discount on gpt-4o-mini at `openai` and a 10 %
markup on claude-3-5-haiku at `anthropic`; each row keeps the list cost beside the charged
cost, computed here by hand from the providers' published prices. The same two figures
reach /api/calls, /api/usage (roll-up and raw rows), `tokenbooth report`, /metrics, a jsonl
export and a signed webhook export; an unpriced model stays NULL in both; `tokenbooth
reprice` recomputes both with the adjustments configured now."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy import state
from proxy.cli import main
from tests.conftest import FakeUpstream, Proxy, Reply, Sdks, StartProxy, wait_until
from tests.e2e.test_ledger_metrics import UNPRICED_JSON, scrape
from tests.e2e.test_passthrough import CHAT_JSON
from tests.factories import chat_json

M = Decimal(1_000_000)
SECRET = "whsec-adjust"
ADJUSTMENTS = [{"match": {"upstream": "openai", "model": "gpt-4o-mini*"}, "percent": -20},
               {"match": {"upstream": "anthropic", "model": "claude-3-5-haiku*"}, "percent": 10}]

USAGE = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
MINI_JSON = chat_json("gpt-4o-mini-2024-07-18", USAGE)
HAIKU_JSON = json.dumps({
    "id": "msg_haiku", "type": "message", "role": "assistant",
    "model": "claude-3-5-haiku-20241022", "content": [{"type": "text", "text": "ok"}],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 1000, "cache_read_input_tokens": 1000,
              "cache_creation_input_tokens": 0, "output_tokens": 100},
}).encode()

# List prices, by hand from the published price lists (per million tokens):
# gpt-4o-mini: $0.15 input, $0.60 output: 1000 x 0.15 + 500 x 0.60 = $0.00045
MINI_LIST = (1000 * Decimal("0.15") + 500 * Decimal("0.60")) / M
# claude-3-5-haiku: $0.80 input, $0.08 cache read, $4 output:
# 1000 x 0.80 + 1000 x 0.08 + 100 x 4 = $0.00128
HAIKU_LIST = (1000 * Decimal("0.80") + 1000 * Decimal("0.08") + 100 * 4) / M
# gpt-4o (no adjustment matches): $2.50 input, $1.25 cached input, $10 output:
# (2310 - 2048) x 2.50 + 2048 x 1.25 + 7 x 10 = $0.003285
GPT4O_LIST = (262 * Decimal("2.5") + 2048 * Decimal("1.25") + 7 * 10) / M
MINI_CHARGED = MINI_LIST * Decimal("0.80")  # 20 % discount: $0.00036
HAIKU_CHARGED = HAIKU_LIST * Decimal("1.10")  # 10 % markup: $0.001408


def money(value: Any) -> Decimal | None:
    """A cost as stored (a double), read back exactly as its shortest repr; a record's
    Decimal as it is."""
    if value is None or isinstance(value, Decimal):
        return value
    return Decimal(repr(value))


class Receiver:
    """A webhook receiver on 127.0.0.1 that checks each batch's signature."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if request.headers.get("X-Tokenbooth-Signature") != f"sha256={mac}":
            self.bad_signatures += 1
        self.records.extend(json.loads(body))
        return web.Response(status=204)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"path": str(tmp_path / "ledger.db"), "flush_seconds": 0.02}
    return {"url": request.getfixturevalue("pg_url"), "flush_seconds": 0.02}


async def _calls(upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    oa = sdk.openai(f"{proxy.url}/openai/v1", default_headers={"X-Meter-Agent": "ana"})
    an = sdk.anthropic(f"{proxy.url}/anthropic", default_headers={"X-Meter-Agent": "ana"})
    msgs = [{"role": "user", "content": "hello"}]
    upstream.on("/v1/chat/completions", Reply([MINI_JSON]))
    await oa.chat.completions.create(model="gpt-4o-mini", messages=msgs)
    upstream.on("/v1/messages", Reply([HAIKU_JSON]))
    await an.messages.create(model="claude-3-5-haiku-latest", max_tokens=100, messages=msgs)
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    await oa.chat.completions.create(model="gpt-4o", messages=msgs)
    upstream.on("/v1/chat/completions", Reply([UNPRICED_JSON]))
    await oa.chat.completions.create(model="mystery-7b", messages=msgs)


def _by_model(rows: Iterable[dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
    return {r["model"]: (money(r["list_cost_usd"]), money(r["cost_usd"])) for r in rows}


HAIKU = "claude-3-5-haiku-latest"  # the name it is priced and recorded as
WANT = {"gpt-4o-mini": (MINI_LIST, MINI_CHARGED), HAIKU: (HAIKU_LIST, HAIKU_CHARGED),
        "gpt-4o": (GPT4O_LIST, GPT4O_LIST), "mystery-7b": (None, None)}


async def _get(proxy: Proxy, path: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}{path}") as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_list_and_charged_costs_everywhere_and_reprice(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Sdks, aiohttp_server: Any,
        ledger: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    receiver = Receiver()
    hook = web.Application()
    hook.router.add_post("/hook", receiver.handle)
    hook_server = await aiohttp_server(hook)
    jsonl = tmp_path / "calls.jsonl"
    proxy = await start_proxy(
        ledger=ledger, pricing={"adjustments": ADJUSTMENTS},
        export=[{"type": "webhook", "url": str(hook_server.make_url("/hook")),
                 "secret": SECRET}, {"type": "jsonl", "path": str(jsonl)}])
    await _calls(upstream, proxy, sdk)
    records = await proxy.collector.wait_for(4)
    assert _by_model({"model": r.model, "list_cost_usd": r.list_cost_usd,
                      "cost_usd": r.cost_usd} for r in records) == WANT
    await proxy.app[state.LEDGER].flush()

    # the ledger's rows, as /api/calls serves them
    calls = (await _get(proxy, "/api/calls?limit=10"))["calls"]
    assert _by_model(calls) == WANT

    # /api/usage: whole hours from the roll-up (no bounds), and raw rows (a bounded range)
    listed = MINI_LIST + HAIKU_LIST + GPT4O_LIST  # $0.005015
    charged = MINI_CHARGED + HAIKU_CHARGED + GPT4O_LIST  # $0.005053
    since = min(r.started_at for r in records)
    for query in ("", f"&since={since}"):
        usage = await _get(proxy, f"/api/usage?group_by=model{query}")
        assert (money(usage["totals"]["list_cost_usd"]), money(usage["totals"]["cost_usd"])) \
            == (listed, charged), query
        assert _by_model(usage["groups"]) == WANT, query
        assert usage["totals"]["unpriced_calls"] == 1

    # /metrics: the list-cost counter beside the cost counter, with the same labels
    samples = await scrape(proxy)
    cost = {s.labels["model"]: s.value for s in samples["tokenbooth_cost_usd_total"]}
    list_cost = {s.labels["model"]: s.value for s in samples["tokenbooth_list_cost_usd_total"]}
    assert cost == {"gpt-4o-mini": float(MINI_CHARGED), HAIKU: float(HAIKU_CHARGED),
                    "gpt-4o": float(GPT4O_LIST)}
    assert list_cost == {"gpt-4o-mini": float(MINI_LIST), HAIKU: float(HAIKU_LIST),
                         "gpt-4o": float(GPT4O_LIST)}
    assert {tuple(sorted(s.labels)) for s in samples["tokenbooth_list_cost_usd_total"]} == \
        {tuple(sorted(s.labels)) for s in samples["tokenbooth_cost_usd_total"]}
    unpriced = samples["tokenbooth_unpriced_requests_total"]
    assert [(s.labels["model"], s.value) for s in unpriced] == [("mystery-7b", 1.0)]

    # exports: the live jsonl record and the webhook's ledger row carry both
    def exported() -> list[dict[str, Any]]:
        return [json.loads(line) for line in jsonl.read_text().splitlines()] \
            if jsonl.exists() else []
    await wait_until(lambda: len(exported()) == 4 and len(receiver.records) == 4,
                     what="both exports")
    assert _by_model(exported()) == WANT
    assert _by_model(receiver.records) == WANT and receiver.bad_signatures == 0

    # `tokenbooth report`: both sums per group and in the totals, and the month to date
    target = ledger.get("url") or ledger["path"]
    assert main(["report", "--db", target, "--by", "model", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert _by_model(out["rows"]) == WANT
    assert (money(out["totals"]["list_cost_usd"]), money(out["totals"]["cost_usd"])) == \
        (listed, charged)
    assert (money(out["month_to_date"]["list_cost_usd"]),
            money(out["month_to_date"]["cost_usd"])) == (listed, charged)
    assert main(["report", "--db", target, "--by", "model"]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0].split()
    assert header[header.index("cost_usd") + 1] == "list_cost_usd"
    mini_line = next(line for line in table.splitlines() if line.startswith("gpt-4o-mini "))
    assert "$0.000360" in mini_line and "$0.000450" in mini_line
    assert "At list prices: $0.0050;" in table
    # `tokenbooth calls`: each call's charged and list cost; the unpriced one says so in both
    assert main(["calls", "--db", target, "--agent", "ana", "--since", "1d"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[-2:] == ["cost_usd", "list_cost_usd"]
    cells = {line.split()[6]: line.split()[-2:] for line in lines[2:]}
    assert cells["gpt-4o-mini"] == ["$0.000360", "$0.000450"]
    assert cells["mystery-7b"] == ["unpriced", "unpriced"]

    # `tokenbooth reprice` with the adjustments changed: gpt-4o-mini now 50 % off, haiku at
    # its list price, gpt-4o marked up 100 %; the unpriced call stays NULL in both
    config = tmp_path / "reprice.yaml"
    config.write_text(json.dumps({
        "ledger": ledger, "upstreams": {"openai": {"url": upstream.url},
                                        "anthropic": {"url": upstream.url}},
        "pricing": {"adjustments": [
            {"match": {"model": "gpt-4o-mini*"}, "percent": -50},
            {"match": {"upstream": "openai", "model": "gpt-4o"}, "percent": 100}]}}))
    await proxy.app[state.LEDGER].flush()
    assert main(["reprice", "--config", str(config), "--since", "1d", "--format",
                 "json"]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n\n")[0])["rows"]
    mini = next(r for r in summary if r["model"] == "gpt-4o-mini")
    assert money(mini["old_cost_usd"]) == MINI_CHARGED
    assert money(mini["new_cost_usd"]) == MINI_LIST * Decimal("0.5")
    assert money(mini["new_list_cost_usd"]) == MINI_LIST
    repriced = {"gpt-4o-mini": (MINI_LIST, MINI_LIST * Decimal("0.5")),
                HAIKU: (HAIKU_LIST, HAIKU_LIST),
                "gpt-4o": (GPT4O_LIST, GPT4O_LIST * 2), "mystery-7b": (None, None)}
    calls = (await _get(proxy, "/api/calls?limit=10"))["calls"]
    assert _by_model(calls) == repriced
    usage = await _get(proxy, "/api/usage?group_by=model")  # the roll-up follows
    assert _by_model(usage["groups"]) == repriced
    assert (money(usage["totals"]["list_cost_usd"]), money(usage["totals"]["cost_usd"])) == (
        listed, MINI_LIST * Decimal("0.5") + HAIKU_LIST + GPT4O_LIST * 2)


LLAMA_JSON = chat_json("llama3.2", USAGE)


async def test_a_free_call_stays_zero_under_a_catch_all_adjustment(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Sdks, ledger: dict[str, Any],
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Local inference (`free: true`) under a 20 % discount on every call: free is 0 at list
    price and 0 charged, in the row, /api/usage (roll-up and raw rows), and after reprice."""
    adjust = {"adjustments": [{"percent": -20}]}  # no match: every call
    local = {"ollama": {"url": upstream.url, "free": True}}
    proxy = await start_proxy(ledger=ledger, pricing=adjust, upstreams=local)
    upstream.on("/v1/chat/completions", Reply([LLAMA_JSON]))
    client = sdk.openai(f"{proxy.url}/ollama/v1")
    await client.chat.completions.create(model="llama3.2",
                                         messages=[{"role": "user", "content": "hi"}])
    [rec] = await proxy.collector.wait_for(1)
    assert (rec.list_cost_usd, rec.cost_usd, rec.price_source) == (0, 0, "free")
    await proxy.app[state.LEDGER].flush()
    zero = {"llama3.2": (Decimal(0), Decimal(0))}

    async def check() -> None:
        [row] = (await _get(proxy, "/api/calls?limit=10"))["calls"]
        assert (_by_model([row]), row["price_source"]) == (zero, "free")
        for query in ("", f"&since={rec.started_at}"):  # the roll-up, then the raw rows
            usage = await _get(proxy, f"/api/usage?group_by=model{query}")
            assert _by_model(usage["groups"]) == zero, query
            assert (money(usage["totals"]["list_cost_usd"]),
                    money(usage["totals"]["cost_usd"])) == (0, 0), query
            assert usage["totals"]["unpriced_calls"] == 0
    await check()
    config = tmp_path / "reprice.yaml"
    config.write_text(json.dumps({"ledger": ledger, "upstreams": local, "pricing": adjust}))
    assert main(["reprice", "--config", str(config), "--since", "1d", "--format",
                 "json"]) == 0
    capsys.readouterr()
    await check()


async def test_a_budget_counts_the_charged_cost(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Sdks) -> None:
    """A budget's spend is the charged cost: 10 discounted gpt-4o-mini calls."""
    proxy = await start_proxy(pricing={"adjustments": ADJUSTMENTS}, budgets=[
        {"name": "mini", "match": {"model": "gpt-4o-mini"}, "limit_usd": 1}])
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    upstream.on("/v1/chat/completions", Reply([MINI_JSON]))
    for _ in range(10):
        await oa.chat.completions.create(model="gpt-4o-mini",
                                         messages=[{"role": "user", "content": "hi"}])
    await proxy.collector.wait_for(10)
    await proxy.app[state.LEDGER].flush()

    async def spend() -> Decimal:
        budgets = (await _get(proxy, "/api/budgets"))["budgets"]
        return money(next(b for b in budgets if b["name"] == "mini")["spend_usd"]) or \
            Decimal(0)
    for _ in range(100):  # the budget reads its sinks' settled records (bounded wait)
        if await spend() == 10 * MINI_CHARGED:
            break
        await asyncio.sleep(0.05)
    assert await spend() == 10 * MINI_CHARGED  # $0.0036, not the list $0.0045
