"""WebSockets through the proxy (proxy/sockets.py): the real openai SDK's realtime client
metered exactly, every frame relayed unchanged both ways, a socket cut by either side
mid-response, a budget refusing the next response.create, SIGTERM with a socket open."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import sqlite3
import ssl
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from prometheus_client.parser import text_string_to_metric_families

from proxy import state
from proxy.record import CallRecord
from tests.conftest import FakeUpstream, Proxy, StartProxy, free_port, served, wait_until

# The realtime response's usage, as OpenAI reports it on `response.done`.
USAGE = {"total_tokens": 253, "input_tokens": 132, "output_tokens": 121,
         "input_token_details": {"text_tokens": 119, "audio_tokens": 13, "image_tokens": 0,
                                 "cached_tokens": 64,
                                 "cached_tokens_details": {"text_tokens": 60, "audio_tokens": 4,
                                                           "image_tokens": 0}},
         "output_token_details": {"text_tokens": 30, "audio_tokens": 91}}
# gpt-realtime, published per million tokens: text in $4, cached text $0.40, audio in $32,
# cached audio $0.40, text out $16, audio out $64.
#   uncached text in  132 - 13 audio - 60 cached text = 59 * 4    = 236
#   cached text        60 * 0.40                                     =  24
#   uncached audio in  13 - 4 cached audio = 9 * 32                   = 288
#   cached audio        4 * 0.40                                     =   1.6
#   text out           30 * 16                                       = 480
#   audio out          91 * 64                                       = 5824
REALTIME_COST = (Decimal(236) + 24 + 288 + Decimal("1.6") + 480 + 5824) / 1_000_000
# gpt-4o-transcribe, per million: text in $2.50, audio in $6, text out $10.
TRANSCRIPTION_USAGE = {"type": "tokens", "input_tokens": 50, "output_tokens": 20,
                       "total_tokens": 70,
                       "input_token_details": {"text_tokens": 10, "audio_tokens": 40}}
TRANSCRIPTION_COST = (Decimal(10) * Decimal("2.5") + 40 * 6 + 20 * 10) / 1_000_000


class FakeRealtime:
    """An OpenAI Realtime server on the fake upstream: a session, then one response per
    `response.create` (created, a transcript delta, done) and a transcription per commit.
    `hold`: stop after the delta (the response stays running); `cut`: then drop the
    connection."""

    def __init__(self, hold: bool = False, cut: bool = False, more: int = 0) -> None:
        self.hold, self.cut, self.more = hold, cut, more  # more: deltas 0.3 s apart
        self.seen: list[dict[str, Any]] = []
        self.headers: dict[str, str] = {}
        self.query = ""
        self.close_code: int | None = None
        self.running = asyncio.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.headers, self.query = dict(request.headers), request.query_string
        ws = web.WebSocketResponse(protocols=("realtime",))
        await ws.prepare(request)
        await ws.send_json({"type": "session.created", "event_id": "ev_0", "session": {
            "object": "realtime.session", "type": "realtime", "id": "sess_abc",
            "model": "gpt-realtime"}})
        n = 0
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            self.seen.append(event)
            if event["type"] == "response.create":
                n += 1
                rid = f"resp_{n}"
                await ws.send_json({"type": "response.created", "event_id": f"ev_c{n}",
                                    "response": {"id": rid, "object": "realtime.response",
                                                 "status": "in_progress"}})
                await ws.send_json({"type": "response.output_audio_transcript.delta",
                                    "event_id": f"ev_d{n}", "response_id": rid,
                                    "item_id": "item_1", "output_index": 0,
                                    "content_index": 0, "delta": "Hello there"})
                for _ in range(self.more):
                    await asyncio.sleep(0.3)  # a response streaming its transcript
                    await ws.send_json({"type": "response.output_audio_transcript.delta",
                                        "event_id": "ev_m", "response_id": rid,
                                        "item_id": "item_1", "output_index": 0,
                                        "content_index": 0, "delta": " and more text"})
                if self.hold:
                    self.running.set()
                    if self.cut:
                        assert request.transport is not None
                        request.transport.abort()
                        return ws
                    continue
                await ws.send_json({"type": "response.done", "event_id": f"ev_e{n}",
                                    "response": {"id": rid, "object": "realtime.response",
                                                 "status": "completed", "usage": USAGE}})
            elif event["type"] == "input_audio_buffer.commit":
                await ws.send_json({
                    "type": "conversation.item.input_audio_transcription.completed",
                    "event_id": "ev_t", "item_id": "item_in", "content_index": 0,
                    "transcript": "hi", "usage": TRANSCRIPTION_USAGE})
        self.close_code = ws.close_code
        return ws


async def test_openai_sdk_realtime_is_metered_per_response(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Any) -> None:
    fake = FakeRealtime()
    upstream.on("/v1/realtime", fake)
    proxy = await start_proxy()
    client = sdk.openai(f"{proxy.url}/openai/v1", api_key="sk-live-key",
                        default_headers={"X-Meter-Agent": "voice"})
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "transcription": {"model": "gpt-4o-transcribe"}}}})
        await conn.response.create()
        async for event in conn:
            if event.type == "response.done":
                assert event.response.usage.input_tokens == 132  # the client got it whole
                break
        await conn.input_audio_buffer.commit()
        async for event in conn:
            if event.type == "conversation.item.input_audio_transcription.completed":
                break
    records = await proxy.collector.wait_for(2)
    assert fake.headers["Authorization"] == "Bearer sk-live-key"  # the key, as sent
    assert "model=gpt-realtime" in fake.query
    assert "X-Meter-Agent" not in fake.headers
    by_op = {r.operation: r for r in records}
    rt, tr = by_op["realtime"], by_op["transcription"]
    assert (rt.model, rt.input_tokens, rt.cache_read_tokens, rt.output_tokens) == \
        ("gpt-realtime", 132, 64, 121)
    assert rt.cost_usd == REALTIME_COST and rt.usage_source == "reported"
    assert rt.priced_units == {"input_audio_tokens": 13, "cache_audio_read_tokens": 4,
                               "output_audio_tokens": 91}
    assert (rt.outcome, rt.status_code, rt.upstream_request_id) == ("ok", 101, "resp_1")
    assert (tr.model, tr.input_tokens, tr.output_tokens, tr.cost_usd) == \
        ("gpt-4o-transcribe", 50, 20, TRANSCRIPTION_COST)
    for r in (rt, tr):  # one socket: its tags, and the provider's session id
        assert (r.agent, r.session, r.path) == ("voice", "sess_abc", "/openai/v1/realtime")
    assert rt.call_id != tr.call_id
    # the response was on the live feed while it ran, under its row's id
    assert [(c.call_id, c.operation, c.model) for c in proxy.collector.started_calls] == \
        [(rt.call_id, "realtime", "gpt-realtime")]
    await asyncio.sleep(0)  # nothing more: the socket's rows are exactly these two
    assert len(proxy.collector.records) == 2


async def test_a_socket_reads_other_tools_attribution_and_strips_their_headers(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Any) -> None:
    """Helicone and Portkey headers on the upgrade: every row of the socket carries their
    tags and end user, and the upstream's handshake has none of them."""
    fake = FakeRealtime()
    upstream.on("/v1/realtime", fake)
    proxy = await start_proxy()
    client = sdk.openai(f"{proxy.url}/openai/v1", api_key="sk-live-key", default_headers={
        "Helicone-Property-Team": "voice-ml", "Helicone-User-Id": "alice",
        "Helicone-Auth": "Bearer sk-helicone", "x-portkey-trace-id": "trace-3"})
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.response.create()
        async for event in conn:
            if event.type == "response.done":
                break
    (rt,) = await proxy.collector.wait_for(1)
    assert rt.tags == {"team": "voice-ml", "trace_id": "trace-3", "session": "sess_abc"}
    assert rt.end_user == "alice" and rt.outcome == "ok"
    assert fake.headers["Authorization"] == "Bearer sk-live-key"
    assert [k for k in fake.headers if k.lower().startswith(("helicone-", "x-portkey-"))] == []


async def test_a_sockets_unreadable_attribution_is_counted_once_for_all_its_rows(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Any) -> None:
    """The upgrade's headers are read once: a bad x-portkey-metadata and a tag value cut to
    256 characters count once on /metrics, however many responses the socket has."""
    upstream.on("/v1/realtime", FakeRealtime())
    proxy = await start_proxy()
    client = sdk.openai(f"{proxy.url}/openai/v1", api_key="sk-live-key", default_headers={
        "x-portkey-metadata": "{not json", "X-Meter-Team": "t" * 300})
    async with client.realtime.connect(model="gpt-realtime") as conn:
        for _ in range(2):
            await conn.response.create()
            async for event in conn:
                if event.type == "response.done":
                    break
    first, second = await proxy.collector.wait_for(2)
    assert first.tags["team"] == second.tags["team"] == "t" * 256
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/metrics") as r:
        text = await r.text()
    values = {m.name: m.value for fam in text_string_to_metric_families(text)
              for m in fam.samples}
    assert values["tokenbooth_attribution_unreadable_total"] == 1.0
    assert values["tokenbooth_tag_values_cleaned_total"] == 1.0


def _digest(h: Any, kind: WSMsgType, data: str | bytes) -> None:
    h.update(b"T" if kind is WSMsgType.TEXT else b"B")
    h.update(data.encode() if isinstance(data, str) else data)


async def test_frames_pass_unchanged_both_ways(upstream: FakeUpstream,
                                               start_proxy: StartProxy) -> None:
    """10,000 frames each way (text and binary, random sizes), their checksum equal at the
    other end; a ping's payload and its pong; the close code and reason both ways."""
    rng = random.Random(7)
    frames = [rng.randbytes(rng.randrange(0, 3000)) if i % 2 else
              rng.randbytes(rng.randrange(0, 1500)).hex() for i in range(10_000)]
    sent_up, got_up, sent_down = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    closes: list[tuple[int | None, str]] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False, autoclose=False, max_msg_size=0,
                                   protocols=("realtime",))
        await ws.prepare(request)
        count = 0
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                _digest(got_up, msg.type, msg.data)
                count += 1
                if count == len(frames):
                    for data in frames:  # the same frames back, the other way
                        if isinstance(data, str):
                            await ws.send_str(data)
                        else:
                            await ws.send_bytes(data)
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data + b"-pong")
            elif msg.type is WSMsgType.CLOSE:
                closes.append((msg.data, msg.extra))
                await ws.close(code=4002, message=b"upstream says bye")
                return ws
            else:
                return ws

    upstream.on("/v1/echo", echo)
    proxy = await start_proxy()
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{proxy.url}/openai/v1/echo", autoping=False,
                                max_msg_size=0, protocols=("realtime", "other")) as ws:
            assert ws.protocol == "realtime"  # the upstream's choice, as it chose
            for data in frames:
                _digest(sent_up, WSMsgType.TEXT if isinstance(data, str) else
                        WSMsgType.BINARY, data)
                if isinstance(data, str):
                    await ws.send_str(data)
                else:
                    await ws.send_bytes(data)
            received = 0
            while received < len(frames):
                msg = await ws.receive(timeout=20)
                assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY), msg
                _digest(sent_down, msg.type, msg.data)
                received += 1
            await ws.ping(b"are you there")
            pong = await ws.receive(timeout=5)
            assert (pong.type, pong.data) == (WSMsgType.PONG, b"are you there-pong")
            await ws.close(code=4001, message=b"client says bye")
            assert ws.close_code == 4002  # the upstream's own reply
    assert got_up.hexdigest() == sent_up.hexdigest()
    mirror = hashlib.sha256()
    for data in frames:
        _digest(mirror, WSMsgType.TEXT if isinstance(data, str) else WSMsgType.BINARY, data)
    assert sent_down.hexdigest() == mirror.hexdigest()
    assert closes == [(4001, "client says bye")]
    (row,) = await proxy.collector.wait_for(1)
    assert (row.operation, row.outcome, row.status_code) == ("other", "ok", 101)


async def test_upstream_close_code_and_reason_reach_the_client(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    async def closer(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(b"\x00\x01last")
        await ws.close(code=4003, message=b"session expired")
        return ws

    upstream.on("/v1/closer", closer)
    proxy = await start_proxy()
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{proxy.url}/openai/v1/closer") as ws:
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\x00\x01last")
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4003,
                                                       "session expired")


async def test_upstream_refusing_the_upgrade_is_its_status_and_a_row(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"type": "invalid_api_key"}}, status=401)

    upstream.on("/v1/realtime", refuse)
    proxy = await start_proxy()
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(f"{proxy.url}/openai/v1/realtime?model=gpt-realtime")
    assert err.value.status == 401
    (row,) = await proxy.collector.wait_for(1)
    assert (row.outcome, row.status_code) == ("upstream_error", 401)


async def test_an_unreachable_upstream_refuses_the_upgrade_with_502_and_a_row(
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(upstreams={"dead": {"url": f"http://127.0.0.1:{free_port()}"}})
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(f"{proxy.url}/dead/v1/realtime?model=gpt-realtime")
    assert err.value.status == 502
    (row,) = await proxy.collector.wait_for(1)
    assert (row.outcome, row.status_code) == ("unreachable", None)


async def _open_running(proxy_url: str, s: aiohttp.ClientSession
                        ) -> aiohttp.ClientWebSocketResponse:
    ws = await s.ws_connect(f"{proxy_url}/openai/v1/realtime?model=gpt-realtime")
    await ws.send_str(json.dumps({"type": "response.create"}))
    while True:  # until the response's first delta: it is running
        msg = await ws.receive(timeout=5)
        if msg.type is WSMsgType.TEXT and "transcript.delta" in msg.data:
            return ws


async def _run_one(ws: aiohttp.ClientWebSocketResponse, event_id: str) -> None:
    """Start a response and read until it is done."""
    await ws.send_str(json.dumps({"type": "response.create", "event_id": event_id}))
    while "response.done" not in (await ws.receive(timeout=5)).data:
        pass


async def _create_reply(ws: aiohttp.ClientWebSocketResponse, event_id: str) -> Any:
    """Ask for a response; the next event the proxy sends back, parsed."""
    await ws.send_str(json.dumps({"type": "response.create", "event_id": event_id}))
    return json.loads((await ws.receive(timeout=5)).data)


async def _commit_reply(ws: aiohttp.ClientWebSocketResponse) -> Any:
    """Commit the audio buffer; the next event the proxy sends back, parsed."""
    await ws.send_str(json.dumps({"type": "input_audio_buffer.commit"}))
    return json.loads((await ws.receive(timeout=5)).data)


def _creates_sent(fake: FakeRealtime) -> list[Any]:
    """The event ids of the response.create events the upstream received."""
    return [e.get("event_id") for e in fake.seen if e["type"] == "response.create"]


async def _refused_rows(proxy: Proxy) -> list[CallRecord]:
    """The refused rows among the socket's three (opening, one response, one refusal)."""
    return [r for r in await proxy.collector.wait_for(3) if r.outcome == "rejected"]


async def test_upstream_cut_mid_response(upstream: FakeUpstream,
                                         start_proxy: StartProxy) -> None:
    upstream.on("/v1/realtime", FakeRealtime(hold=True, cut=True))
    proxy = await start_proxy()
    async with aiohttp.ClientSession() as s:
        ws = await _open_running(proxy.url, s)
        msg = await ws.receive(timeout=5)  # the client's connection is cut too
        assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR, WSMsgType.CLOSE)
        await ws.close()
    (row,) = await proxy.collector.wait_for(1)
    assert (row.operation, row.outcome, row.upstream_request_id) == \
        ("realtime", "upstream_aborted", "resp_1")
    assert row.model == "gpt-realtime" and row.cost_usd is None


async def test_client_gone_mid_response(upstream: FakeUpstream,
                                        start_proxy: StartProxy) -> None:
    fake = FakeRealtime(hold=True)
    upstream.on("/v1/realtime", fake)
    proxy = await start_proxy()
    async with aiohttp.ClientSession() as s:
        ws = await _open_running(proxy.url, s)
        # the client's connection drops without a close frame
        conn = ws._response.connection
        assert conn is not None and conn.transport is not None
        conn.transport.abort()
    (row,) = await proxy.collector.wait_for(1)
    assert (row.operation, row.outcome, row.upstream_request_id) == \
        ("realtime", "client_aborted", "resp_1")
    await wait_until(lambda: fake.close_code == 1001, 5, "the upstream socket closed")


async def test_budget_refuses_the_next_response_and_the_socket_stays_up(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    fake = FakeRealtime()
    upstream.on("/v1/realtime", fake)
    proxy = await start_proxy(budgets=[{"name": "voice-cap", "match": {"agent": "voice"},
                                        "limit_usd": 0.001, "window": "total",
                                        "action": "block"}])
    async with aiohttp.ClientSession(headers={"X-Meter-Agent": "voice"}) as s:
        ws = await s.ws_connect(f"{proxy.url}/openai/v1/realtime?model=gpt-realtime")
        await _run_one(ws, "c1")
        await proxy.collector.wait_for(1)  # $0.0068536 spent: over the $0.001 cap
        refusal = await _create_reply(ws, "c2")
        assert refusal["type"] == "error"
        assert refusal["error"]["code"] == "budget_exceeded"
        assert refusal["error"]["event_id"] == "c2"
        got = await _commit_reply(ws)  # still up, both ways
        assert got["type"] == "conversation.item.input_audio_transcription.completed"
        await ws.close()
    assert _creates_sent(fake) == ["c1"]
    refused = await _refused_rows(proxy)
    assert len(refused) == 1 and refused[0].status_code == 429
    assert refused[0].error == "budget voice-cap exhausted"


async def test_a_rate_limit_refuses_the_next_response_and_the_socket_stays_up(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    fake = FakeRealtime()
    upstream.on("/v1/realtime", fake)
    # two requests a minute: the socket's opening and its first response.create
    proxy = await start_proxy(rate_limits=[{"name": "voice-rpm", "match": {"agent": "voice"},
                                            "requests_per_minute": 2}])
    async with aiohttp.ClientSession(headers={"X-Meter-Agent": "voice"}) as s:
        ws = await s.ws_connect(f"{proxy.url}/openai/v1/realtime?model=gpt-realtime")
        await _run_one(ws, "c1")
        refusal = await _create_reply(ws, "c2")
        assert refusal["type"] == "error"
        assert refusal["error"]["code"] == "rate_limit_exceeded"
        assert refusal["error"]["event_id"] == "c2" and "voice-rpm" in refusal["error"]["message"]
        got = await _commit_reply(ws)  # still up, both ways
        assert got["type"] == "conversation.item.input_audio_transcription.completed"
        await ws.close()
    assert _creates_sent(fake) == ["c1"]
    refused = await _refused_rows(proxy)
    assert len(refused) == 1 and refused[0].status_code == 429
    assert refused[0].error == "rate limit voice-rpm exceeded"
    # a third socket-opening in the minute is refused at the handshake, as any call
    async with aiohttp.ClientSession(headers={"X-Meter-Agent": "voice"}) as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(f"{proxy.url}/openai/v1/realtime?model=gpt-realtime")
    assert info.value.status == 429


async def test_sigterm_closes_an_open_socket_with_1001_and_records_it(
        aiohttp_server: Any, tmp_path: Path) -> None:
    fake = FakeRealtime(hold=True)
    async def realtime(request: web.Request) -> web.StreamResponse:
        return await fake(request)

    app = web.Application()
    app.router.add_get("/v1/realtime", realtime)
    up = await aiohttp_server(app)
    config = (f"upstreams: {{openai: {{url: '{str(up.make_url('')).rstrip('/')}'}}}}\n"
              f"ledger: {{path: '{tmp_path / 'l.db'}'}}\nserver: {{drain_seconds: 2}}\n")
    async with served(tmp_path, config) as (proc, port):
        async with aiohttp.ClientSession() as s:
            ws = await _open_running(f"http://127.0.0.1:{port}", s)
            os.kill(proc.pid, signal.SIGTERM)
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
            await ws.close()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    conn = sqlite3.connect(tmp_path / "l.db")
    rows = conn.execute("SELECT operation, outcome, error, upstream_request_id "
                        "FROM llm_usage").fetchall()
    conn.close()
    assert rows == [("realtime", "timeout", "cut at shutdown: drain deadline", "resp_1")]


async def test_client_keys_and_the_proxy_held_key_apply_to_sockets(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    """With `api_key` on the upstream, a socket needs a client key (as a header, or as a
    browser's key subprotocol) and the upstream gets ours; without one, 401 and a row."""
    fake = FakeRealtime()
    upstream.on("/v1/realtime", fake)
    proxy = await start_proxy(upstreams={"openai": {"url": upstream.url,
                                                    "api_key": "sk-proxy-held"}},
                              auth={"client_keys": {"team-a": "ck-team-a"}})
    url = f"{proxy.url}/openai/v1/realtime?model=gpt-realtime"
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(url, headers={"Authorization": "Bearer sk-someone"})
        assert err.value.status == 401
        ws = await s.ws_connect(url, protocols=("realtime", "openai-insecure-api-key.ck-team-a"))
        assert ws.protocol == "realtime"
        await ws.close()
    assert fake.headers["Authorization"] == "Bearer sk-proxy-held"
    assert "ck-team-a" not in json.dumps(fake.headers)
    records = await proxy.collector.wait_for(2)
    assert sorted((r.outcome, r.client) for r in records) == [("ok", "team-a"),
                                                              ("rejected", None)]


async def test_a_consumer_key_opens_a_socket_within_its_models(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    """A consumer key as the browser's key subprotocol: the upstream gets the proxy's key,
    never the consumer key; the socket's rows are the key's; a model outside its globs is
    refused (403) before the upstream is asked."""
    fake = FakeRealtime()
    upstream.on("/v1/realtime", fake)
    proxy = await start_proxy(upstreams={"openai": {"url": upstream.url,
                                                    "api_key": "sk-proxy-held"}},
                              auth={"client_keys": {"team-a": "ck-team-a"}})
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/api/keys", json={
                "name": "voice", "tags": {"team": "rt"}, "models": ["gpt-realtime*"]}) as r:
            made = await r.json()
        proto = f"openai-insecure-api-key.{made['key']}"
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(f"{proxy.url}/openai/v1/realtime?model=gpt-4o",
                               protocols=("realtime", proto))
        assert err.value.status == 403
        ws = await s.ws_connect(f"{proxy.url}/openai/v1/realtime?model=gpt-realtime",
                                protocols=("realtime", proto))
        assert ws.protocol == "realtime"
        await ws.close()
    assert fake.headers["Authorization"] == "Bearer sk-proxy-held"
    assert made["key"] not in json.dumps(fake.headers)
    records = await proxy.collector.wait_for(2)
    assert sorted((r.outcome, r.status_code, r.client, r.consumer_key, r.tags.get("team"))
                  for r in records) == [("ok", 101, "voice", made["id"], "rt"),
                                        ("rejected", 403, "voice", made["id"], "rt")]


async def test_a_key_revoked_while_its_socket_is_open_stops_the_next_response(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    """A consumer key is checked at the handshake and again at each `response.create`: once
    revoked, the next one gets the provider's `error` event (not forwarded), a refused row,
    and the socket is closed with 1008 (policy violation)."""
    fake = FakeRealtime()
    upstream.on("/v1/realtime", fake)
    proxy = await start_proxy(upstreams={"openai": {"url": upstream.url,
                                                    "api_key": "sk-proxy-held"}})
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/api/keys", json={"name": "voice"}) as r:
            made = await r.json()
        ws = await s.ws_connect(f"{proxy.url}/openai/v1/realtime?model=gpt-realtime",
                                protocols=("realtime", f"openai-insecure-api-key.{made['key']}"))
        await _run_one(ws, "c1")
        async with s.delete(f"{proxy.url}/api/keys/{made['id']}") as r:
            assert r.status == 200
        registry = proxy.app[state.KEYS]
        await wait_until(lambda: registry.by_id[made["id"]].revoked_at is not None,
                         what="the proxy to see the revocation")
        refusal = await _create_reply(ws, "c2")
        assert refusal["type"] == "error" and refusal["error"]["code"] == "invalid_api_key"
        assert refusal["error"]["event_id"] == "c2"
        assert refusal["error"]["message"] == f"this consumer key is revoked ({made['id']})"
        closing = await ws.receive(timeout=5)
        assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1008)
        await ws.close()
    assert [e.get("event_id") for e in fake.seen if e["type"] == "response.create"] == ["c1"]
    records = await proxy.collector.wait_for(2)  # the response's, the refused one's
    assert sorted((r.outcome, r.status_code, r.error or "", r.consumer_key)
                  for r in records) == [
        ("ok", 101, "", made["id"]), ("rejected", 401, "consumer key revoked", None)]


async def test_a_silent_socket_meets_the_idle_timeout(upstream: FakeUpstream,
                                                      start_proxy: StartProxy) -> None:
    """No message either way for server.idle_timeout_seconds: both sides closed with 1001,
    and the socket's row says it timed out."""
    fake = FakeRealtime()
    upstream.on("/v1/realtime", fake)
    proxy = await start_proxy(server={"idle_timeout_seconds": 0.5})
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{proxy.url}/openai/v1/realtime?model=gpt-realtime")
        assert json.loads((await ws.receive(timeout=5)).data)["type"] == "session.created"
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
        await ws.close()
    await wait_until(lambda: fake.close_code == 1001, 5, "the upstream socket closed")
    (row,) = await proxy.collector.wait_for(1)
    assert (row.operation, row.outcome, row.request_model) == ("realtime", "timeout",
                                                               "gpt-realtime")


async def _events(r: aiohttp.ClientResponse, until: str) -> list[tuple[str, Any]]:
    """Server-sent events of the live feed up to and including the first `until`."""
    got = []
    while True:
        block = (await asyncio.wait_for(r.content.readuntil(b"\n\n"), 10)).decode()
        event, data = block.rstrip().split("\n", 1)
        got.append((event[len("event: "):], json.loads(data[len("data: "):])))
        if got[-1][0] == until:
            return got


async def test_a_running_response_is_on_the_live_feed(upstream: FakeUpstream,
                                                      start_proxy: StartProxy) -> None:
    upstream.on("/v1/realtime", FakeRealtime(more=3))
    proxy = await start_proxy()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/api/live") as feed:
            await _events(feed, "snapshot")
            ws = await s.ws_connect(f"{proxy.url}/openai/v1/realtime?model=gpt-realtime",
                                    headers={"X-Meter-Session": "call-42"})
            await ws.send_str(json.dumps({"type": "response.create"}))
            events = await _events(feed, "call_finished")
            await ws.close()
    kinds = [k for k, _ in events]
    assert kinds[0] == "call_started" and "call_progress" in kinds
    started = events[0][1]
    assert (started["operation"], started["model"], started["session"]) == \
        ("realtime", "gpt-realtime", "call-42")
    progress = next(d for k, d in events if k == "call_progress")
    # "Hello there" and " and more text" so far, as characters / 4 while unreported
    assert progress["usage_source"] == "estimated" and progress["output_tokens"] >= 3
    finished = events[-1][1]
    assert finished["call_id"] == started["call_id"]
    assert finished["output_tokens"] == 121 and finished["session"] == "call-42"


async def test_google_genai_live_through_the_proxy_is_metered_per_turn(
        aiohttp_server: Any, tmp_path: Path, estimator: Any,
        tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """The real google-genai Live client (wss: it has an API key) through the proxy (behind
    TLS) to a fake Live upstream replaying a recorded AI Studio audio session: every frame
    relayed, one `realtime` row per completed turn, usage per turn (never summed), priced
    by modality."""
    from google import genai
    from google.genai import types

    from proxy.app import make_app
    from tests.conftest import Collector, make_config
    from tests.dialects.gemini.test_gemini_live import LiveServer, frames, pcm, speak_two_turns

    server_ctx, client_ctx = tls
    fake = LiveServer(frames("ai_studio_audio"))
    live_app = web.Application()
    live_app.router.add_get("/{tail:.*}", fake.handle)
    live = await aiohttp_server(live_app)
    config = make_config(tmp_path, str(live.make_url("")).rstrip("/"))
    collector = Collector()
    app = make_app(config, estimator=estimator, extra_sinks=(collector,))
    proxy = await aiohttp_server(app, ssl=server_ctx)

    script = frames("ai_studio_audio")
    audio = [pcm(f) for direction, f in script if direction == "client" and '"audio"' in f]
    client = genai.Client(api_key="AIza-test-key", http_options=types.HttpOptions(
        base_url=f"https://127.0.0.1:{proxy.port}/gemini",
        headers={"X-Meter-Agent": "voice"},
        async_client_args={"ssl": client_ctx}))
    config_live = types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        session_resumption=types.SessionResumptionConfig())
    first, second = await speak_two_turns(client, config_live, audio, fake)
    # the client read the upstream's usage as sent, per turn
    usage = [m.usage_metadata for m in first + second if m.usage_metadata is not None]
    assert [(u.prompt_token_count, u.response_token_count) for u in usage] == [
        (373, 150), (596, 212)]
    # the upstream got the path under the upstream's base, the key, no X-Meter-* header
    assert fake.path == \
        "/ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent"
    assert fake.headers["x-goog-api-key"] == "AIza-test-key"
    assert not any(h.lower().startswith("x-meter-") for h in fake.headers)
    records = await collector.wait_for(2)
    turns = sorted((r for r in records if r.operation == "realtime"),
                   key=lambda r: r.input_tokens or 0)
    native = "gemini-2.5-flash-native-audio-preview-09-2025"  # priced as the Live model
    assert [(r.response_model, r.model, r.input_tokens, r.output_tokens, r.usage_source,
             r.outcome) for r in turns] == [
        (native, "gemini-live-2.5-flash", 373, 150, "reported", "ok"),
        (native, "gemini-live-2.5-flash", 596, 212, "reported", "ok")]
    # Live native audio, per million tokens: text in $0.50, audio in $3.00, audio out $12.00
    m = Decimal(1_000_000)
    assert [r.cost_usd for r in turns] == [
        (305 * Decimal("0.50") + 68 * Decimal("3.00") + 150 * Decimal("12.00")) / m,
        (478 * Decimal("0.50") + 118 * Decimal("3.00") + 212 * Decimal("12.00")) / m]
    # one socket, one session: pinned at its first row (Live names the session with its
    # first resumption handle, after the first turn), so the socket's own
    (session,) = {r.session for r in turns}
    assert session is not None and session.startswith("ws-")
    assert {(r.agent, r.path) for r in turns} == {
        ("voice",
         "/gemini/ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent")}


async def test_with_otel_spans_each_response_is_a_span_under_the_sockets_traceparent(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    from tests.otlp import attrs, http_receiver

    fake = FakeRealtime()
    upstream.on("/v1/realtime", fake)
    trace, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    sent = f"00-{trace}-{parent}-01"
    async with http_receiver() as (url, got):
        proxy = await start_proxy(otel={"endpoint": url, "export_interval_seconds": 0.2,
                                        "metrics": False})
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"{proxy.url}/openai/v1/realtime?model=gpt-realtime",
                                    headers={"traceparent": sent}) as ws:
                for _ in range(2):
                    await ws.send_str(json.dumps({"type": "response.create"}))
                    while True:
                        msg = await ws.receive(timeout=5)
                        if msg.type is WSMsgType.TEXT and '"response.done"' in msg.data:
                            break
        records = await proxy.collector.wait_for(2)
        await got.until(lambda: len(got.spans) >= 2)
    assert fake.headers["traceparent"] == sent  # the socket's handshake: passed on as sent
    spans = got.span_by_call()
    assert set(spans) == {r.call_id for r in records}
    assert {attrs(s.attributes)["gen_ai.response.id"] for s in spans.values()} == \
        {"resp_1", "resp_2"}
    assert {(s.trace_id.hex(), s.parent_span_id.hex()) for s in spans.values()} == \
        {(trace, parent)}
    assert len({s.span_id for s in spans.values()}) == 2
    for s in spans.values():
        a = attrs(s.attributes)
        assert s.name == "realtime_inference gpt-realtime"  # gen-ai-realtime-spans.md
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (132, 121)
        assert a["tokenbooth.cost_usd"] == float(REALTIME_COST)
