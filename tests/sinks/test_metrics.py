"""Metric labels cannot be poisoned: refused or failed calls bring no new label values,
unknown upstream names are `other`, and each family keeps a bounded number of series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from proxy.config import ModelPrice
from proxy.pricing import PriceBook
from proxy.sinks.metrics import Metrics
from tests.factories import make_record


def series(metrics: Metrics, family: str = "tokenbooth_requests") -> list[dict[str, str]]:
    return [s.labels for fam in metrics.registry.collect() if fam.name == family
            for s in fam.samples if s.name == f"{family}_total"]


async def test_junk_from_refused_and_failed_calls_cannot_fill_the_cap() -> None:
    metrics = Metrics(CollectorRegistry(), max_label_values=100,
                      upstreams=("openai", "anthropic"))
    for i in range(150):  # unauthenticated callers: refused before forwarding
        await metrics.handle(make_record(call_id=f"r{i}", upstream=f"nosuch{i}", model=f"junk{i}",
                                         agent=f"bot{i}", outcome="rejected", status_code=401))
    for i in range(150):  # the provider does not know the model
        await metrics.handle(make_record(call_id=f"e{i}", model=f"fake-{i}", agent=f"x{i}",
                                         outcome="upstream_error", status_code=404,
                                         input_tokens=None, output_tokens=None))
    await metrics.handle(make_record(call_id="real", upstream="openai", model="gpt-4o",
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
            await metrics.handle(make_record(call_id=f"c{a}-{m}", agent=f"a{a}",
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


def unpriced(metrics: Metrics) -> dict[str, float]:
    return {s.labels["model"]: s.value for fam in metrics.registry.collect()
            if fam.name == "tokenbooth_unpriced_requests" for s in fam.samples
            if s.name == "tokenbooth_unpriced_requests_total"}


async def test_an_ok_call_without_a_cost_is_unpriced_whatever_its_usage() -> None:
    metrics = Metrics(CollectorRegistry())
    none = dict.fromkeys(("input_tokens", "cache_read_tokens", "cache_write_tokens",
                          "output_tokens", "reasoning_tokens", "total_tokens"))
    for i in range(3):  # speech the proxy cannot read: no usage, no cost, succeeded
        await metrics.handle(make_record(call_id=f"s{i}", model="tts-1", operation="audio",
                                         usage_source="none", cost_usd=None, **none))
    await metrics.handle(make_record(call_id="e", model="tts-1", operation="audio",
                                     outcome="upstream_error", status_code=500,
                                     usage_source="none", cost_usd=None, **none))
    await metrics.handle(make_record(call_id="cut", model="mystery-7b", cost_usd=None,
                                     outcome="client_aborted", usage_source="partial"))
    await metrics.handle(make_record(call_id="p"))  # priced
    assert unpriced(metrics) == {"tts-1": 3, "mystery-7b": 1}


async def test_a_model_the_price_list_knows_keeps_its_label_after_junk_fills_the_cap() -> None:
    prices = PriceBook({"house-llama": ModelPrice(input=0.1, output=0.2)})
    metrics = Metrics(CollectorRegistry(), max_label_values=100,
                      known_models=prices.known_models)
    for i in range(150):  # an upstream that accepts any model name (llama.cpp): ok calls
        await metrics.handle(make_record(call_id=f"j{i}", model=f"junk-{i}", cost_usd=None))
    await metrics.handle(make_record(call_id="real", model="gpt-4o"))
    await metrics.handle(make_record(call_id="house", model="house-llama"))
    models = {s["model"] for s in series(metrics)}
    assert {"gpt-4o", "house-llama", "other"} <= models
    assert len(models - {"gpt-4o", "house-llama", "other"}) == 100  # junk shares the cap
    assert {s["model"] for s in series(metrics, "tokenbooth_cost_usd")} == {"gpt-4o",
                                                                           "house-llama"}
