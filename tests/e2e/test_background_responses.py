"""Background responses through the proxy with the real openai SDK: the create is a pending
row (no tokens, no cost: never $0), the usage is recorded once, as a linked row, the first
time the proxy sees the response finished (retrieve, resumed stream, the create's own
stream, cancel); retrieving again, or retrieving an ordinary response, adds no cost.

Prices by hand (genai-prices 0.2.3, OpenAI, per million tokens): gpt-4.1 $2 input,
$0.50 cached input, $8 output.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import aiohttp
from aiohttp import web

from proxy import state
from proxy.build import background_call_id
from tests.conftest import FakeUpstream, Proxy, Reply, Sdks, wait_until
from tests.e2e.test_ledger_metrics import rows, scrape
from tests.e2e.test_passthrough import CHAT_JSON

M = Decimal(1_000_000)
RID = "resp_bg_0001"
USAGE = {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 200},
         "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 0},
         "total_tokens": 1500}
# 1000 uncached at $2, 200 cached at $0.50, 300 out at $8 (per million)
COST = (1000 * Decimal(2) + 200 * Decimal("0.5") + 300 * Decimal(8)) / M
ORDINARY_USAGE = {"input_tokens": 40, "output_tokens": 10, "total_tokens": 50}
ORDINARY_COST = (40 * Decimal(2) + 10 * Decimal(8)) / M


def response(status: str, *, rid: str = RID, background: bool = True,
             usage: dict[str, Any] | None = None) -> dict[str, Any]:
    done = status == "completed"
    return {"id": rid, "object": "response", "created_at": 1764756000, "status": status,
            "background": background, "model": "gpt-4.1-2025-04-14", "error": None,
            "incomplete_details": None, "instructions": None, "metadata": {},
            "parallel_tool_calls": True, "temperature": 1.0, "tool_choice": "auto",
            "tools": [], "top_p": 1.0,
            "output": [{"type": "message", "id": "msg_1", "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "Lisbon.",
                                     "annotations": []}]}] if done else [],
            "usage": usage}


def events(*, rid: str = RID, after: int = -1) -> bytes:
    """The response's event stream (as the create streams it, or resumed after `after`)."""
    evs: list[tuple[str, dict[str, Any]]] = [
           ("response.created", {"response": response("queued", rid=rid)}),
           ("response.queued", {"response": response("queued", rid=rid)}),
           ("response.in_progress", {"response": response("in_progress", rid=rid)}),
           ("response.output_text.delta", {"item_id": "msg_1", "output_index": 0,
                                           "content_index": 0, "delta": "Lisbon."}),
           ("response.completed", {"response": response("completed", rid=rid,
                                                        usage=USAGE)})]
    out = b""
    for n, (kind, body) in enumerate(evs):
        if n > after:
            data = json.dumps({"type": kind, "sequence_number": n, **body})
            out += f"event: {kind}\ndata: {data}\n\n".encode()
    return out


class FakeResponses:
    """The Responses API of a fake OpenAI: a background response is queued on create and
    completed from the first retrieve on."""

    def __init__(self, upstream: FakeUpstream, *, cancelled_usage: Any = None) -> None:
        self.status = "queued"
        self.cancelled_usage = cancelled_usage
        upstream.on("/v1/responses", self.create)
        upstream.on(f"/v1/responses/{RID}", self.retrieve)
        upstream.on(f"/v1/responses/{RID}/cancel", self.cancel)
        upstream.on("/v1/responses/resp_plain", self.plain)

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        if not body.get("background"):
            return web.json_response(response("completed", rid="resp_plain", background=False,
                                              usage=ORDINARY_USAGE))
        if body.get("stream"):
            return await self._sse(request, events())
        return web.json_response(response("queued"))

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        if self.status == "queued":
            self.status = "completed"
        if request.query.get("stream") == "true":
            return await self._sse(request, events(after=int(request.query["starting_after"])))
        usage = USAGE if self.status == "completed" else self.cancelled_usage
        return web.json_response(response(self.status, usage=usage))

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        self.status = "cancelled"
        return web.json_response(response("cancelled", usage=self.cancelled_usage))

    async def plain(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(response("completed", rid="resp_plain", background=False,
                                          usage=ORDINARY_USAGE))

    @staticmethod
    async def _sse(request: web.Request, body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp


async def settle(proxy: Proxy, upstream: FakeUpstream, sdk: Sdks) -> None:
    """Every call made so far is in the ledger: a last ordinary call, recorded after them
    (one recorder queue), is in the ledger too."""
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    last = await oa.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    call_id = last.headers["X-Meter-Call-Id"]
    await wait_until(lambda: any(r.call_id == call_id for r in proxy.collector.records),
                     what="the last call recorded")
    await proxy.app[state.LEDGER].flush()


def by_operation(proxy: Proxy) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in rows(proxy):
        out.setdefault(r["operation"], []).append(r)
    return out


def assert_pending_create(row: Any, agent: str | None = "poller", outcome: str = "ok") -> None:
    assert row["usage_source"] == "pending" and row["outcome"] == outcome
    assert row["cost_usd"] is None and row["price_source"] is None
    assert row["input_tokens"] is None and row["output_tokens"] is None
    assert row["upstream_request_id"] == RID and row["agent"] == agent
    assert row["request_model"] == "gpt-4.1" and row["method"] == "POST"


def assert_usage_row(row: Any, *, agent: str = "poller") -> None:
    assert row["call_id"] == background_call_id("openai", RID)
    assert row["upstream_request_id"] == RID and row["operation"] == "responses"
    assert row["usage_source"] == "reported" and row["outcome"] == "ok"
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) \
        == (1200, 200, 300)
    assert Decimal(repr(row["cost_usd"])) == COST
    assert row["price_source"].startswith("genai-prices") and row["model"] == "gpt-4.1"
    assert row["agent"] == agent and row["session"] == "s-bg"
    assert row["request_model"] == "gpt-4.1"  # from its create


async def test_create_then_retrieve_twice_records_the_usage_once(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    FakeResponses(upstream)
    oa = sdk.openai(f"{proxy.url}/openai/v1",
                    default_headers={"X-Meter-Agent": "poller", "X-Meter-Session": "s-bg"})
    created = await oa.responses.with_raw_response.create(
        model="gpt-4.1", input="Capital of Portugal?", background=True)
    assert created.parse().status == "queued"
    # the retrieves come without attribution: the usage row keeps its create's
    plain = sdk.openai(f"{proxy.url}/openai/v1")
    first = await plain.responses.retrieve(RID)
    second = await plain.responses.retrieve(RID)
    assert first.status == second.status == "completed" and first.output_text == "Lisbon."
    await settle(proxy, upstream, sdk)
    ops = by_operation(proxy)
    (create,) = ops["responses"][:1]
    assert create["call_id"] == created.headers["X-Meter-Call-Id"]
    assert_pending_create(create)
    (usage_row,) = ops["responses"][1:]
    assert_usage_row(usage_row)
    assert len(ops["retrieve"]) == 2
    for r in ops["retrieve"]:  # a retrieval bills nothing: zero, priced free
        assert r["cost_usd"] == 0 and r["price_source"] == "free"
        assert r["input_tokens"] == 0 and r["output_tokens"] == 0 and r["method"] == "GET"
        assert r["upstream_request_id"] == RID and r["agent"] is None
    metrics = await scrape(proxy)
    spend = sum(s.value for s in metrics["tokenbooth_cost_usd_total"]
                if s.labels["model"] == "gpt-4.1")
    assert abs(spend - float(COST)) < 1e-12


async def test_never_retrieved_is_pending_never_zero(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    FakeResponses(upstream)
    oa = sdk.openai(f"{proxy.url}/openai/v1", default_headers={"X-Meter-Agent": "poller"})
    await oa.responses.create(model="gpt-4.1", input="Capital of Portugal?", background=True)
    await settle(proxy, upstream, sdk)
    (create,) = by_operation(proxy)["responses"]
    assert_pending_create(create)
    async with aiohttp.ClientSession() as s, \
            s.get(f"{proxy.url}/api/usage?group_by=operation&since=7d") as r:
        body = await r.json()
    group = next(g for g in body["groups"] if g["operation"] == "responses")
    # its cost is not known yet: pending, neither $0 nor unpriced
    assert group["calls"] == 1 and group["cost_usd"] is None
    assert group["pending_calls"] == 1 and group["unpriced_calls"] == 0
    assert body["totals"]["pending_calls"] == 1
    metrics = await scrape(proxy)
    assert not [s for s in metrics["tokenbooth_cost_usd_total"] if s.labels["model"] == "gpt-4.1"]
    assert not [s for s in metrics["tokenbooth_unpriced_requests_total"]
                if s.labels["model"] == "gpt-4.1"]


async def test_resumed_stream_records_the_usage_once(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    FakeResponses(upstream)
    oa = sdk.openai(f"{proxy.url}/openai/v1",
                    default_headers={"X-Meter-Agent": "poller", "X-Meter-Session": "s-bg"})
    await oa.responses.create(model="gpt-4.1", input="Capital of Portugal?", background=True)
    stream = await oa.responses.retrieve(RID, stream=True, starting_after=2)
    kinds = [ev.type async for ev in stream]
    assert kinds == ["response.output_text.delta", "response.completed"]
    again = await oa.responses.retrieve(RID)  # seen finished before: adds nothing
    assert again.status == "completed"
    await settle(proxy, upstream, sdk)
    ops = by_operation(proxy)
    create, usage_row = ops["responses"]
    assert_pending_create(create)
    assert_usage_row(usage_row)
    assert usage_row["stream"] == 1 and usage_row["path"] == f"/openai/v1/responses/{RID}"
    resumed, plain = ops["retrieve"]
    assert resumed["stream"] == 1 and plain["stream"] == 0
    assert resumed["cost_usd"] == plain["cost_usd"] == 0


async def test_streamed_create_seen_finished_then_retrieved_counts_once(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    FakeResponses(upstream)
    oa = sdk.openai(f"{proxy.url}/openai/v1",
                    default_headers={"X-Meter-Agent": "poller", "X-Meter-Session": "s-bg"})
    stream = await oa.responses.create(model="gpt-4.1", input="Capital of Portugal?",
                                       background=True, stream=True)
    assert [ev.type async for ev in stream][-1] == "response.completed"
    await oa.responses.retrieve(RID)
    await settle(proxy, upstream, sdk)
    ops = by_operation(proxy)
    create, usage_row = ops["responses"]
    assert_pending_create(create)
    assert create["stream"] == 1
    assert_usage_row(usage_row)
    assert len(ops["retrieve"]) == 1 and ops["retrieve"][0]["cost_usd"] == 0


async def test_retrieving_an_ordinary_response_adds_no_cost(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    FakeResponses(upstream)
    oa = sdk.openai(f"{proxy.url}/openai/v1", default_headers={"X-Meter-Agent": "poller"})
    done = await oa.responses.create(model="gpt-4.1", input="Capital of Portugal?")
    for _ in range(2):
        assert (await oa.responses.retrieve(done.id)).status == "completed"
    await settle(proxy, upstream, sdk)
    ops = by_operation(proxy)
    (create,) = ops["responses"]
    assert create["usage_source"] == "reported"
    assert Decimal(repr(create["cost_usd"])) == ORDINARY_COST
    assert [r["cost_usd"] for r in ops["retrieve"]] == [0, 0]
    assert sum(Decimal(repr(r["cost_usd"])) for r in rows(proxy)
               if r["model"] == "gpt-4.1") == ORDINARY_COST


async def test_cancelled_keeps_what_was_reported(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    partial = {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 0},
               "output_tokens": 40, "total_tokens": 1240}
    FakeResponses(upstream, cancelled_usage=partial)
    oa = sdk.openai(f"{proxy.url}/openai/v1",
                    default_headers={"X-Meter-Agent": "poller", "X-Meter-Session": "s-bg"})
    await oa.responses.create(model="gpt-4.1", input="Capital of Portugal?", background=True)
    cancelled = await oa.responses.cancel(RID)
    assert cancelled.status == "cancelled"
    assert (await oa.responses.retrieve(RID)).status == "cancelled"
    await settle(proxy, upstream, sdk)
    ops = by_operation(proxy)
    create, usage_row = ops["responses"]
    assert_pending_create(create)
    assert usage_row["call_id"] == background_call_id("openai", RID)
    assert (usage_row["input_tokens"], usage_row["output_tokens"]) == (1200, 40)
    assert usage_row["usage_source"] == "reported" and usage_row["method"] == "POST"
    # 1200 in at $2, 40 out at $8 (per million)
    assert Decimal(repr(usage_row["cost_usd"])) == (1200 * Decimal(2) + 40 * Decimal(8)) / M
    (cancel,) = ops["cancel"]
    assert cancel["cost_usd"] == 0 and cancel["path"] == f"/openai/v1/responses/{RID}/cancel"
    assert [r["cost_usd"] for r in ops["retrieve"]] == [0]


async def test_a_client_that_leaves_the_streamed_create_resumes_it_and_pays_once(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    """The reason background streams exist: the client drops the create's stream, the
    response runs on, the client resumes it later. The create is pending (cut by the
    client), the resumed stream records the usage once."""
    fake = FakeResponses(upstream)
    left = asyncio.Event()

    async def create(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        first = events()
        await resp.write(first[:first.index(b"event: response.in_progress")])
        try:  # the model runs on upstream: the rest only once the client has gone
            await asyncio.wait_for(left.wait(), 10)
            await resp.write(first[first.index(b"event: response.in_progress"):])
        except (ConnectionResetError, TimeoutError):
            pass
        return resp

    upstream.on("/v1/responses", create)
    oa = sdk.openai(f"{proxy.url}/openai/v1",
                    default_headers={"X-Meter-Agent": "poller", "X-Meter-Session": "s-bg"})
    stream = await oa.responses.create(model="gpt-4.1", input="Capital of Portugal?",
                                       background=True, stream=True)
    seen = []
    async for ev in stream:
        seen.append(ev.sequence_number)
        if ev.type == "response.queued":
            break
    await stream.close()
    left.set()
    await wait_until(lambda: any(r.operation == "responses" for r in proxy.collector.records),
                     what="the create recorded")
    fake.status = "completed"
    resumed = await oa.responses.retrieve(RID, stream=True, starting_after=seen[-1])
    assert [ev.type async for ev in resumed][-1] == "response.completed"
    await settle(proxy, upstream, sdk)
    ops = by_operation(proxy)
    create_row, usage_row = ops["responses"]
    assert_pending_create(create_row, outcome="client_aborted")  # still pending, not $0
    assert_usage_row(usage_row)
    assert [r["cost_usd"] for r in ops["retrieve"]] == [0]
