"""Batch results downloaded through the proxy, with the real SDKs' helpers: one row per
result line at the batch rate, written once however often the file is downloaded, and the
metrics agree with the ledger."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import aiohttp

from proxy import state
from tests.conftest import FakeUpstream, Proxy, Reply, Sdks
from tests.e2e.test_ledger_metrics import rows, scrape
from tests.e2e.test_passthrough import CHAT_JSON

PAYLOADS = Path(__file__).parents[1] / "payloads"
OPENAI_FILE = (PAYLOADS / "openai_batch" / "output.jsonl").read_bytes()
ANTHROPIC_RESULTS = (PAYLOADS / "anthropic_batch" / "results.jsonl").read_bytes()
GEMINI_RESULTS = (PAYLOADS / "gemini_batch" / "results.jsonl").read_bytes()
M = Decimal(1_000_000)
BINARY = {"Content-Type": "application/octet-stream"}


async def settle(proxy: Proxy, upstream: FakeUpstream, sdk: Sdks, n: int) -> None:
    """Every call made so far is recorded: a last ordinary call's record comes after them."""
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    await oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    await proxy.collector.wait_for(n)
    await proxy.app[state.LEDGER].flush()


async def test_openai_batch_file_downloaded_twice_is_recorded_once(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    upstream.on("/v1/files/file-out1/content", Reply([OPENAI_FILE[:500], OPENAI_FILE[500:]],
                                                      headers=BINARY))
    oa = sdk.openai(f"{proxy.url}/openai/v1", default_headers={"X-Meter-Agent": "batcher"})
    for _ in range(2):
        content = await oa.files.content("file-out1")
        assert content.content == OPENAI_FILE  # forwarded unchanged
    await settle(proxy, upstream, sdk, 4)
    batch = [r for r in rows(proxy) if r["operation"] == "batch"]
    assert len(batch) == 3 and len(proxy.collector.records) == 4
    by_id = {r["upstream_request_id"]: r for r in batch}
    one, two = by_id["chatcmpl-b1"], by_id["chatcmpl-b2"]
    # gpt-4o-mini batch: $0.075 in, $0.30 out per million
    assert Decimal(repr(one["cost_usd"])) == (1200 * Decimal("0.075") + 300 * Decimal("0.3")) / M
    assert Decimal(repr(two["cost_usd"])) == (800 * Decimal("0.075") + 100 * Decimal("0.3")) / M
    failed = next(r for r in batch if r["upstream_request_id"] is None)
    assert failed["cost_usd"] == 0 and failed["outcome"] == "upstream_error"
    for r in batch:
        assert r["batch_id"] == "file-out1" and r["agent"] == "batcher"
        assert r["usage_source"] == "reported" and not r["stream"]
    assert one["service_tier"] == "default" and one["input_tokens"] == 1200
    metrics = await scrape(proxy)
    calls = sum(s.value for s in metrics["tokenbooth_requests_total"]
                if s.labels["operation"] == "batch")
    spend = sum(s.value for s in metrics["tokenbooth_cost_usd_total"]
                if s.labels["model"] == "gpt-4o-mini")
    assert calls == 3
    assert abs(spend - float(one["cost_usd"] + two["cost_usd"])) < 1e-12


async def test_anthropic_sdk_batch_results_helper_is_metered(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    batch = {"id": "msgbatch_01", "type": "message_batch", "processing_status": "ended",
             "request_counts": {"processing": 0, "succeeded": 2, "errored": 1, "canceled": 0,
                                "expired": 1},
             "created_at": "2026-11-29T10:00:00Z", "ended_at": "2026-11-29T11:00:00Z",
             "expires_at": "2026-11-30T10:00:00Z", "archived_at": None,
             "cancel_initiated_at": None,
             "results_url": f"{upstream.url}/v1/messages/batches/msgbatch_01/results"}
    upstream.on("/v1/messages/batches/msgbatch_01", Reply([json.dumps(batch).encode()]))
    upstream.on("/v1/messages/batches/msgbatch_01/results",
                Reply([ANTHROPIC_RESULTS], headers=BINARY))
    an = sdk.anthropic(f"{proxy.url}/anthropic", default_headers={"X-Meter-Agent": "nightly"})
    for _ in range(2):
        results = [r async for r in await an.messages.batches.results("msgbatch_01")]
        assert [r.custom_id for r in results] == ["a-1", "a-2", "a-3", "a-4"]
    # the SDK followed results_url through the proxy, both times
    fetched = [r for r in upstream.requests if r.path.endswith("/results")]
    assert len(fetched) == 2 and all("X-Meter-Agent" not in r.headers for r in fetched)
    await settle(proxy, upstream, sdk, 2 + 4 + 1)  # 2 retrieves, 4 lines, 1 settle call
    lines = {r["upstream_request_id"]: r for r in rows(proxy) if r["operation"] == "batch"}
    assert len([r for r in rows(proxy) if r["operation"] == "batch"]) == 4
    # Sonnet 4.5 batch: $1.50 in, $0.15 cache read, $7.50 out per million
    assert Decimal(repr(lines["msg_b1"]["cost_usd"])) == (2000 * Decimal("1.5")
                                                          + 500 * Decimal("7.5")) / M
    assert Decimal(repr(lines["msg_b3"]["cost_usd"])) == (
        1000 * Decimal("1.5") + 4000 * Decimal("0.15") + 100 * Decimal("7.5")) / M
    assert lines["msg_b1"]["service_tier"] == "batch"
    assert {r["batch_id"] for r in lines.values()} == {"msgbatch_01"}


async def test_gemini_batch_result_file(upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    upstream.on("/download/v1beta/files/batch-7:download", Reply([GEMINI_RESULTS],
                                                                 headers=BINARY))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/gemini/download/v1beta/files/batch-7:download?alt=media",
                         headers={"x-goog-api-key": "g-key"}) as r:
            assert await r.read() == GEMINI_RESULTS
    await settle(proxy, upstream, sdk, 3)
    lines = [r for r in rows(proxy) if r["operation"] == "batch"]
    ok = next(r for r in lines if r["upstream_request_id"] == "gb1")
    # gemini-2.5-flash batch: $0.15 in, $1.25 out per million
    assert Decimal(repr(ok["cost_usd"])) == (400 * Decimal("0.15") + 50 * Decimal("1.25")) / M
    assert len(lines) == 2 and {r["batch_id"] for r in lines} == {"batch-7"}


async def test_a_file_that_is_not_a_batch_result_is_one_ordinary_row(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    upstream.on("/v1/files/file-train/content", Reply([b'{"messages": []}\n'], headers=BINARY))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    await oa.files.content("file-train")
    await settle(proxy, upstream, sdk, 2)
    dl = [r for r in rows(proxy) if r["path"].endswith("file-train/content")]
    assert len(dl) == 1 and dl[0]["batch_id"] is None and dl[0]["outcome"] == "ok"



async def test_gemini_inline_batch_results_polled_twice_are_recorded_once(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    running = json.dumps({"name": "batches/abc123", "done": False,
                          "metadata": {"state": "BATCH_STATE_RUNNING"}}).encode()
    finished = (PAYLOADS / "gemini_batch" / "inline.json").read_bytes()
    async with aiohttp.ClientSession(headers={"x-goog-api-key": "g",
                                              "X-Meter-Agent": "nightly"}) as s:
        for body in (running, finished, finished):  # polled until done, then once more
            upstream.on("/v1beta/batches/abc123", Reply([body]))
            async with s.get(f"{proxy.url}/gemini/v1beta/batches/abc123") as r:
                assert await r.read() == body
    await settle(proxy, upstream, sdk, 1 + 3 + 1)  # the running poll, 3 lines, settle call
    lines = [r for r in rows(proxy) if r["operation"] == "batch"]
    assert len(lines) == 3 and {r["batch_id"] for r in lines} == {"batches/abc123"}
    ok = next(r for r in lines if r["upstream_request_id"] == "gi1")
    # gemini-2.5-flash batch: $0.15 in, $1.25 out per million
    assert Decimal(repr(ok["cost_usd"])) == (1000 * Decimal("0.15") + 200 * Decimal("1.25")) / M
    assert ok["agent"] == "nightly"
    polls = [r for r in rows(proxy)
             if r["path"].endswith("batches/abc123") and r["operation"] != "batch"]
    assert len(polls) == 1 and polls[0]["operation"] == "other"  # the poll before it was done
