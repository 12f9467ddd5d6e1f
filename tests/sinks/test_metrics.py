"""Metric labels cannot be poisoned: refused or failed calls bring no new label values,
unknown upstream names are `other`, and each family keeps a bounded number of series.
Every family moves from a real fact, and every family is documented (and only those)."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import ModelPrice
from proxy.pricing import PriceBook
from proxy.record import LiveCall
from proxy.sinks.metrics import Metrics
from tests.conftest import FakeUpstream, Proxy, Reply, StartProxy, free_port
from tests.factories import make_record

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"


def series(metrics: Metrics, family: str = "tokenbooth_requests") -> list[dict[str, str]]:
    return [s.labels for fam in metrics.registry.collect() if fam.name == family
            for s in fam.samples if s.name == f"{family}_total"]


async def test_junk_from_refused_and_failed_calls_cannot_fill_the_cap() -> None:
    metrics = Metrics(CollectorRegistry(), max_label_values=100,
                      upstreams=("openai", "anthropic"))
    for i in range(150):  # unauthenticated callers: refused before forwarding
        metrics.observe(make_record(call_id=f"r{i}", upstream=f"nosuch{i}", model=f"junk{i}",
                                         agent=f"bot{i}", outcome="rejected", status_code=401))
    for i in range(150):  # the provider does not know the model
        metrics.observe(make_record(call_id=f"e{i}", model=f"fake-{i}", agent=f"x{i}",
                                         outcome="upstream_error", status_code=404,
                                         input_tokens=None, output_tokens=None))
    metrics.observe(make_record(call_id="real", upstream="openai", model="gpt-4o",
                                     agent="researcher"))
    real = [s for s in series(metrics) if s["agent"] == "researcher"]
    assert real == [{**real[0], "upstream": "openai", "model": "gpt-4o", "agent": "researcher"}]
    upstreams = {s["upstream"] for s in series(metrics)}
    assert upstreams == {"openai", "other"}
    assert {s["model"] for s in series(metrics)} == {"gpt-4o", "other"}


async def test_each_family_keeps_a_bounded_number_of_series() -> None:
    metrics = Metrics(CollectorRegistry(), max_label_values=100, max_series=500)
    for a in range(100):
        for m in range(100):
            metrics.observe(make_record(call_id=f"c{a}-{m}", agent=f"a{a}",
                                             model=f"m{m}"))
    got = series(metrics)
    assert len(got) <= 500
    total = sum(s.value for fam in metrics.registry.collect()
                if fam.name == "tokenbooth_requests" for s in fam.samples
                if s.name == "tokenbooth_requests_total")
    assert total == 100 * 100  # nothing is lost, only folded into `other`
    durations = {tuple(sorted(s.labels.items())) for fam in metrics.registry.collect()
                 if fam.name == "tokenbooth_request_duration_seconds" for s in fam.samples
                 if s.name.endswith("_count")}
    assert len(durations) <= 500


async def scrape(proxy: Proxy) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/metrics") as r:
        assert r.status == 200
        return await r.text()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == name}


async def test_every_exposed_family_is_documented_and_every_documented_one_exposed(
        start_proxy: StartProxy) -> None:
    # with `otel:` too: its export counters are families of their own (a closed port here)
    proxy = await start_proxy(budgets=[{"name": "team", "limit_usd": 5, "window": "day"}],
                              otel={"endpoint": f"http://127.0.0.1:{free_port()}",
                                    "timeout_seconds": 0.2})
    text = await scrape(proxy)
    types = dict(re.findall(r"^# TYPE (tokenbooth_\w+) (\w+)$", text, re.M))
    # prometheus-client adds a `<name>_created` gauge beside each counter: not a family
    exposed = {name for name in types
               if not (name.endswith("_created")
                       and types.get(name.removesuffix("_created") + "_total") == "counter")}
    assert "tokenbooth_requests_total" in exposed and "tokenbooth_budget_limit_usd" in exposed
    table = REFERENCE.read_text().split("## Prometheus metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(tokenbooth_\w+)`", table))
    assert exposed - documented == set(), "exposed but not in docs/reference.md"
    assert documented - exposed == set(), "in docs/reference.md but not exposed"


async def test_cleaned_tag_values_and_unreadable_bodies_are_counted(
        upstream: FakeUpstream, proxy: Proxy) -> None:
    upstream.on("/v1/chat/completions",
                Reply([b"{not json"], headers={"Content-Type": "application/json"}))
    async with aiohttp.ClientSession() as s:
        # one value over 256 characters (truncated), one with a tab (stripped)
        headers = {"X-Meter-Agent": "a" * 300, "X-Meter-Run": "r\t-1",
                   "Content-Type": "application/json"}
        async with s.post(f"{proxy.url}/openai/v1/chat/completions", headers=headers,
                          data=b'{"model":"gpt-4o","messages":[]}') as r:
            assert r.status == 200
            assert await r.read() == b"{not json"  # the client still gets the body as sent
    [record] = await proxy.collector.wait_for(1)
    assert record.tags_cleaned == 2 and record.parse_errors == 1
    assert record.agent == "a" * 256 and record.run == "r-1"
    text = await scrape(proxy)
    assert samples(text, "tokenbooth_tag_values_cleaned_total") == {(): 2.0}
    assert samples(text, "tokenbooth_parse_errors_total") == {(("upstream", "openai"),): 1.0}


def unpriced(metrics: Metrics) -> dict[str, float]:
    return {s.labels["model"]: s.value for fam in metrics.registry.collect()
            if fam.name == "tokenbooth_unpriced_requests" for s in fam.samples
            if s.name == "tokenbooth_unpriced_requests_total"}


async def test_an_ok_call_without_a_cost_is_unpriced_whatever_its_usage() -> None:
    metrics = Metrics(CollectorRegistry())
    none = dict.fromkeys(("input_tokens", "cache_read_tokens", "cache_write_tokens",
                          "output_tokens", "reasoning_tokens", "total_tokens"))
    for i in range(3):  # speech the proxy cannot read: no usage, no cost, succeeded
        metrics.observe(make_record(call_id=f"s{i}", model="tts-1", operation="audio",
                                         usage_source="none", cost_usd=None, **none))
    metrics.observe(make_record(call_id="e", model="tts-1", operation="audio",
                                     outcome="upstream_error", status_code=500,
                                     usage_source="none", cost_usd=None, **none))
    metrics.observe(make_record(call_id="cut", model="mystery-7b", cost_usd=None,
                                     outcome="client_aborted", usage_source="partial"))
    metrics.observe(make_record(call_id="p"))  # priced
    assert unpriced(metrics) == {"tts-1": 3, "mystery-7b": 1}


async def test_a_model_the_price_list_knows_keeps_its_label_after_junk_fills_the_cap() -> None:
    prices = PriceBook({"house-llama": ModelPrice(input=0.1, output=0.2)})
    metrics = Metrics(CollectorRegistry(), max_label_values=100,
                      known_models=prices.known_models)
    for i in range(150):  # an upstream that accepts any model name (llama.cpp): ok calls
        metrics.observe(make_record(call_id=f"j{i}", model=f"junk-{i}", cost_usd=None))
    metrics.observe(make_record(call_id="real", model="gpt-4o"))
    metrics.observe(make_record(call_id="house", model="house-llama"))
    models = {s["model"] for s in series(metrics)}
    assert {"gpt-4o", "house-llama", "other"} <= models
    assert len(models - {"gpt-4o", "house-llama", "other"}) == 100  # junk shares the cap
    assert {s["model"] for s in series(metrics, "tokenbooth_cost_usd")} == {"gpt-4o",
                                                                           "house-llama"}


async def test_kept_values_skip_the_cap_and_give_the_labels_it_would() -> None:
    # A record whose values the cap already keeps takes them without asking it again: the
    # labels must be the ones the cap gives, whatever order the values came in.
    metrics = Metrics(CollectorRegistry(), max_label_values=3, upstreams=("openai",),
                      tag_labels=("team",))
    live = LiveCall(call_id="l0", started_at="2026-11-20T10:00:00.000Z", upstream="nosuch",
                    operation="chat", stream=False, agent=None, session=None, run=None)
    metrics.started(live)  # the in-flight gauge keeps `nosuch`...
    for i, (up, team, status, outcome) in enumerate([
            ("nosuch", "blue", 200, "ok"),  # ...but requests never take an unconfigured name
            ("openai", "blue", 200, "ok"), ("openai", "blue", 200, "ok"),
            ("openai", "blue", 401, "rejected"),  # a kept value: its own even when refused
            ("openai", "red", 401, "rejected"),  # a new value from a refused call: other
            ("openai", "red", 200, "ok"), ("openai", "green", 200, "ok"),
            ("openai", "yellow", 200, "ok"),  # the cap is full: other
            ("openai", "red", 200, "ok"), ("nosuch", "blue", 200, "ok")]):
        metrics.observe(make_record(call_id=f"l{i}", upstream=up, agent="a",
                                         tags={"team": team}, status_code=status,
                                         outcome=outcome))
    got = {(s.labels["upstream"], s.labels["team"], s.labels["code"]): s.value for fam
           in metrics.registry.collect() if fam.name == "tokenbooth_requests"
           for s in fam.samples if s.name == "tokenbooth_requests_total"}
    assert got == {("other", "blue", "200"): 2, ("openai", "blue", "200"): 2,
                   ("openai", "blue", "401"): 1, ("openai", "other", "401"): 1,
                   ("openai", "red", "200"): 2, ("openai", "green", "200"): 1,
                   ("openai", "other", "200"): 1}
    inflight = {s.labels["upstream"]: s.value for fam in metrics.registry.collect()
                if fam.name == "tokenbooth_inflight_requests" for s in fam.samples}
    assert inflight == {"nosuch": 0}  # l0 started and ended


async def test_an_unusual_status_code_is_its_own_code_label() -> None:
    metrics = Metrics(CollectorRegistry())
    for i, status in enumerate((200, 599, 999, None)):
        metrics.observe(make_record(call_id=f"s{i}", status_code=status,
                                         outcome="ok" if status else "client_aborted"))
    assert sorted(s["code"] for s in series(metrics)) == ["200", "599", "999", "none"]
