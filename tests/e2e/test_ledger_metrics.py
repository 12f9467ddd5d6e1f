"""A mixed workload through the proxy: one row per call, and /metrics equal to the ledger."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import defaultdict
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FakeUpstream, Proxy, Reply, Sdks, StartProxy
from tests.e2e.test_injection import openai_like
from tests.e2e.test_passthrough import ANTHROPIC_JSON, CHAT_JSON, CHAT_STREAM, SSE

RESPONSES_JSON = json.dumps({
    "id": "resp_1", "object": "response", "status": "completed", "model": "gpt-5-2025-08-07",
    "output": [{"type": "message", "id": "m", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "ok", "annotations": []}]}],
    "usage": {"input_tokens": 5120, "input_tokens_details": {"cached_tokens": 4096},
              "output_tokens": 610, "output_tokens_details": {"reasoning_tokens": 512},
              "total_tokens": 5730}}).encode()
UNPRICED_JSON = json.dumps({
    "id": "x1", "object": "chat.completion", "created": 1, "model": "mystery-7b",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "?"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12}}).encode()


async def scrape(proxy: Proxy) -> dict[str, list[Any]]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/metrics") as r:
            text = await r.text()
    out: dict[str, list[Any]] = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out[sample.name].append(sample)
    return out


def rows(proxy: Proxy) -> list[sqlite3.Row]:
    conn = sqlite3.connect(proxy.config.ledger.path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM llm_usage ORDER BY id").fetchall()
    finally:
        conn.close()


async def run_mixed_workload(upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    oa = sdk.openai(f"{proxy.url}/openai/v1", default_headers={"X-Meter-Agent": "researcher"})
    an = sdk.anthropic(f"{proxy.url}/anthropic", default_headers={"X-Meter-Agent": "writer"})
    msgs = [{"role": "user", "content": "hello"}]
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    await oa.chat.completions.create(model="gpt-4o", messages=msgs)
    upstream.on("/v1/chat/completions", Reply(CHAT_STREAM, headers=SSE))
    async for _ in await oa.chat.completions.create(
            model="gpt-4o", messages=msgs, stream=True,
            stream_options={"include_usage": True}):
        pass
    upstream.on("/v1/responses", Reply([RESPONSES_JSON]))
    await oa.responses.create(model="gpt-5", input="hi")
    upstream.on("/v1/messages", Reply([ANTHROPIC_JSON]))
    await an.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=msgs)
    # estimated: a stream whose upstream refuses usage injection and never sends usage
    upstream.on("/v1/chat/completions", openai_like(reject_stream_options=True))
    async for _ in await oa.chat.completions.create(model="gpt-4o-mini", messages=msgs,
                                                    stream=True):
        pass
    upstream.on("/v1/chat/completions", Reply([UNPRICED_JSON]))
    await oa.chat.completions.create(model="mystery-7b", messages=msgs)
    upstream.on("/v1/chat/completions", Reply([b'{"error":{"type":"server_error"}}'],
                                              status=500))
    with pytest.raises(openai.InternalServerError):
        await oa.chat.completions.create(model="gpt-4o", messages=msgs)
    chunks = [b'data: {"id":"a","model":"gpt-4o","choices":[{"delta":{"content":"x"}}]}\n\n'] * 50
    upstream.on("/v1/chat/completions", Reply(chunks, headers=SSE, delay=0.05))
    async with aiohttp.ClientSession() as s:
        resp = await s.post(f"{proxy.url}/openai/v1/chat/completions",
                            json={"model": "gpt-4o", "stream": True, "messages": msgs},
                            headers={"X-Meter-Agent": "researcher"})
        await resp.content.readany()
        resp.close()
    _ = anthropic  # the SDK module is exercised through the `sdk` fixture


async def test_mixed_workload_rows_and_metrics_agree(upstream: FakeUpstream, proxy: Proxy,
                                                     sdk: Sdks) -> None:
    await run_mixed_workload(upstream, proxy, sdk)
    await proxy.collector.wait_for(8)
    await proxy.app[__import__("proxy.state").state.LEDGER].flush()
    got = rows(proxy)
    assert len(got) == 8  # the 400-then-resend stream is one call, one row
    by_outcome = defaultdict(list)
    for r in got:
        by_outcome[r["outcome"]].append(r)
    assert len({r["call_id"] for r in got}) == len(got)
    ok = [r for r in got if r["outcome"] == "ok"]
    first = ok[0]
    assert (first["input_tokens"], first["cache_read_tokens"], first["output_tokens"],
            first["usage_source"], first["agent"]) == (2310, 2048, 7, "reported", "researcher")
    resp_row = next(r for r in got if r["operation"] == "responses")
    assert (resp_row["input_tokens"], resp_row["reasoning_tokens"]) == (5120, 512)
    anth = next(r for r in got if r["upstream"] == "anthropic")
    assert (anth["input_tokens"], anth["cache_write_tokens"], anth["agent"]) == (8312, 300,
                                                                                 "writer")
    est = [r for r in got if r["usage_source"] == "estimated"]
    assert est and all(r["estimator"].startswith("tiktoken:") for r in est)
    unpriced = next(r for r in got if r["model"] == "mystery-7b")
    assert unpriced["cost_usd"] is None and unpriced["usage_source"] == "reported"
    assert by_outcome["upstream_error"][0]["status_code"] == 500
    assert len(by_outcome["client_aborted"]) == 1

    m = await scrape(proxy)
    def total(name: str, **labels: str) -> float:
        return sum(s.value for s in m[name]
                   if all(s.labels.get(k) == v for k, v in labels.items()))

    sums = {k: sum(r[k] or 0 for r in got if r["usage_source"] != "none")
            for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens",
                      "output_tokens", "reasoning_tokens")}
    assert total("tokenbooth_input_tokens_total") == sums["input_tokens"]
    assert total("tokenbooth_input_tokens_total", cache="read") == sums["cache_read_tokens"]
    assert total("tokenbooth_input_tokens_total", cache="write") == sums["cache_write_tokens"]
    assert total("tokenbooth_output_tokens_total") == sums["output_tokens"]
    assert total("tokenbooth_output_tokens_total", phase="reasoning") == \
        sums["reasoning_tokens"]
    assert total("tokenbooth_input_tokens_total", source="estimated") == \
        sum(r["input_tokens"] for r in est)
    assert total("tokenbooth_cost_usd_total") == pytest.approx(
        sum(r["cost_usd"] or 0 for r in got), rel=1e-12, abs=1e-15)
    assert total("tokenbooth_requests_total") == len(got)
    assert total("tokenbooth_requests_total", outcome="client_aborted") == 1
    assert total("tokenbooth_unpriced_requests_total", model="mystery-7b") == 1
    assert total("tokenbooth_ledger_rows_total", result="written") == len(got)
    assert total("tokenbooth_inflight_requests") == 0
    assert total("tokenbooth_build_info") == 1


async def test_label_values_are_capped(upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(metrics={"max_label_values": 5})
    async with aiohttp.ClientSession() as s:
        for i in range(40):
            upstream.on("/v1/chat/completions", Reply([json.dumps({
                "model": f"model-{i}", "usage": {"prompt_tokens": 1, "completion_tokens": 1}
            }).encode()]))
            async with s.post(f"{proxy.url}/openai/v1/chat/completions", json={},
                              headers={"X-Meter-Agent": f"agent-{i}",
                                       "X-Meter-Session": f"s-{i}"}) as r:
                await r.read()
    await proxy.collector.wait_for(40)
    m = await scrape(proxy)
    agents = {s.labels["agent"] for s in m["tokenbooth_requests_total"]}
    models = {s.labels["model"] for s in m["tokenbooth_requests_total"]}
    assert len(agents) <= 6 and "other" in agents
    assert len(models) <= 6 and "other" in models
    assert all("session" not in s.labels for v in m.values() for s in v)


async def test_a_known_model_keeps_its_label_after_junk(upstream: FakeUpstream,
                                                        start_proxy: StartProxy) -> None:
    """An upstream that accepts any model name (llama.cpp): junk fills the cap, and a real
    gpt-4o call (priced by the price list) still has its own label."""
    proxy = await start_proxy(metrics={"max_label_values": 5})
    async with aiohttp.ClientSession() as s:
        for model in [*(f"junk-{i}" for i in range(10)), "gpt-4o"]:
            upstream.on("/v1/chat/completions", Reply([json.dumps({
                "model": model, "usage": {"prompt_tokens": 1, "completion_tokens": 1}
            }).encode()]))
            async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                              json={"model": model}) as r:
                assert r.status == 200
                await r.read()
    await proxy.collector.wait_for(11)
    m = await scrape(proxy)
    models = {s.labels["model"] for s in m["tokenbooth_requests_total"]}
    assert models == {*(f"junk-{i}" for i in range(5)), "other", "gpt-4o"}
    assert {s.labels["model"] for s in m["tokenbooth_cost_usd_total"]} == {"gpt-4o"}


async def test_ten_thousand_values_stay_capped(estimator: Any) -> None:
    from prometheus_client import CollectorRegistry

    from proxy.sinks.metrics import Metrics
    from tests.factories import make_record

    metrics = Metrics(CollectorRegistry(), max_label_values=100)
    for i in range(10_000):
        metrics.observe(make_record(call_id=f"c{i}", agent=f"a{i}", model=f"m{i}",
                                         upstream="openai"))
    series = {tuple(sorted(s.labels.items()))
              for fam in metrics.registry.collect() if fam.name == "tokenbooth_requests"
              for s in fam.samples if s.name == "tokenbooth_requests_total"}
    assert len(series) <= 101 * 101
    agents = {dict(k)["agent"] for k in series}
    assert len(agents) == 101 and "other" in agents


async def test_tag_labels_only_when_configured(upstream: FakeUpstream,
                                               start_proxy: StartProxy) -> None:
    proxy = await start_proxy(metrics={"tag_labels": ["team"]})
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/chat/completions", json={},
                          headers={"X-Meter-Team": "search", "X-Meter-Round": "3"}) as r:
            await r.read()
    await proxy.collector.wait_for(1)
    m = await scrape(proxy)
    (sample,) = m["tokenbooth_requests_total"]
    assert sample.labels["team"] == "search" and "round" not in sample.labels
    await asyncio.sleep(0)
