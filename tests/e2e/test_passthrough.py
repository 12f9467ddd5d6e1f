"""Faithful forwarding with the real SDKs: same results and the same bytes as direct."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from tests.conftest import FakeUpstream, Proxy, Reply, Sdks, StartProxy, sse

CHAT_JSON = json.dumps({
    "id": "chatcmpl-7Qx1", "object": "chat.completion", "created": 1767000000,
    "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Lisbon."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 2310, "completion_tokens": 7, "total_tokens": 2317,
              "prompt_tokens_details": {"cached_tokens": 2048}},
}).encode()

CHAT_STREAM = sse(
    'data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06",'
    '"choices":[{"index":0,"delta":{"role":"assistant","content":"Lis"},"finish_reason":null}],'
    '"usage":null}',
    'data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06",'
    '"choices":[{"index":0,"delta":{"content":"bon."},"finish_reason":"stop"}],"usage":null}',
    'data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06",'
    '"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}',
    "data: [DONE]",
)

ANTHROPIC_JSON = json.dumps({
    "id": "msg_01Ab", "type": "message", "role": "assistant",
    "model": "claude-sonnet-4-20250514", "content": [{"type": "text", "text": "Done."}],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 12, "cache_creation_input_tokens": 300,
              "cache_read_input_tokens": 8000, "output_tokens": 180},
}).encode()

ANTHROPIC_STREAM = sse(
    'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    '"role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,'
    '"stop_sequence":null,"usage":{"input_tokens":2100,"cache_creation_input_tokens":0,'
    '"cache_read_input_tokens":50,"output_tokens":3}}}',
    'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    '"content_block":{"type":"text","text":""}}',
    'event: ping\ndata: {"type": "ping"}',
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    '"delta":{"type":"text_delta","text":"Hi"}}',
    'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}',
    'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
    '"stop_sequence":null},"usage":{"output_tokens":640}}',
    'event: message_stop\ndata: {"type":"message_stop"}',
)
SSE = {"Content-Type": "text/event-stream"}


async def test_openai_sdk_non_streaming_same_as_direct(upstream: FakeUpstream, proxy: Proxy,
                                                       sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    args = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Capital of Portugal?"}]}
    direct = await sdk.openai(f"{upstream.url}/v1").chat.completions.create(**args)
    via = await sdk.openai(f"{proxy.url}/openai/v1").chat.completions.create(**args)
    assert via.model_dump() == direct.model_dump()
    (rec,) = await proxy.collector.wait_for(1)
    assert (rec.input_tokens, rec.cache_read_tokens, rec.output_tokens) == (2310, 2048, 7)
    assert rec.usage_source == "reported" and rec.outcome == "ok"


async def test_openai_sdk_streaming_same_chunks_as_direct(upstream: FakeUpstream, proxy: Proxy,
                                                          sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", Reply(CHAT_STREAM, headers=SSE, delay=0.01))
    args = {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]}
    direct = [c.model_dump() async for c in await sdk.openai(f"{upstream.url}/v1")
              .chat.completions.create(**args)]
    via = [c.model_dump() async for c in await sdk.openai(f"{proxy.url}/openai/v1")
           .chat.completions.create(**args)]
    assert via == direct and len(via) == 3
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.stream and rec.ttft_ms is not None
    assert (rec.input_tokens, rec.output_tokens, rec.usage_source) == (12, 3, "reported")
    # the client asked for usage itself: the request went upstream untouched
    assert json.loads(upstream.requests[-1].body) == args


async def test_anthropic_sdk_both_modes(upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    args = {"model": "claude-sonnet-4-6", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}]}
    upstream.on("/v1/messages", Reply([ANTHROPIC_JSON]))
    direct = await sdk.anthropic(upstream.url).messages.create(**args)
    via = await sdk.anthropic(f"{proxy.url}/anthropic").messages.create(**args)
    assert via.model_dump() == direct.model_dump()
    upstream.on("/v1/messages", Reply(ANTHROPIC_STREAM, headers=SSE))
    direct_ev = [e.model_dump() async for e in await sdk.anthropic(upstream.url).messages.create(
        **args, stream=True)]
    via = sdk.anthropic(f"{proxy.url}/anthropic")
    via_ev = [e.model_dump() async for e in await via.messages.create(**args, stream=True)]
    assert via_ev == direct_ev
    recs = await proxy.collector.wait_for(2)
    assert (recs[0].input_tokens, recs[0].cache_read_tokens, recs[0].cache_write_tokens,
            recs[0].output_tokens) == (8312, 8000, 300, 180)
    assert (recs[1].input_tokens, recs[1].output_tokens) == (2150, 640)


async def test_bodies_are_byte_identical(upstream: FakeUpstream, proxy: Proxy) -> None:
    upstream.on("/v1/messages", Reply(ANTHROPIC_STREAM, headers=SSE))
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.post(f"{proxy.url}/anthropic/v1/messages", json={"stream": True}) as r:
            got = await r.read()
            assert r.headers["X-Meter-Call-Id"]
    assert got == b"".join(ANTHROPIC_STREAM)


async def test_each_chunk_arrives_before_the_next_is_sent(upstream: FakeUpstream,
                                                          proxy: Proxy) -> None:
    chunks = [f"data: {{\"n\": {i}}}\n\n".encode() for i in range(5)]
    upstream.on("/v1/chat/completions", Reply(chunks, headers=SSE, delay=0.25))
    loop = asyncio.get_running_loop()
    arrivals = []
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/chat/completions", json={}) as r:
            async for chunk in r.content.iter_any():
                arrivals.append((loop.time(), chunk))
    assert b"".join(c for _, c in arrivals) == b"".join(chunks)
    assert len(arrivals) == len(chunks)  # never coalesced, never split
    for i in range(len(chunks) - 1):
        assert arrivals[i][0] < upstream.sent[i + 1]


async def test_the_head_of_a_json_response_is_not_held_for_its_body(
        upstream: FakeUpstream, proxy: Proxy) -> None:
    """A non-streamed answer whose upstream sends the head before the body: the client gets
    the head at once (the proxy joins head and body in one write only when the body is
    already there)."""
    got_head = asyncio.Event()

    async def head_then_body(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await asyncio.wait_for(got_head.wait(), 5)  # the body only once the head went through
        await resp.write(CHAT_JSON)
        await resp.write_eof()
        return resp

    upstream.on("/v1/chat/completions", head_then_body)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                          json={"model": "gpt-4o", "messages": []}) as r:
            got_head.set()
            assert r.status == 200 and r.headers["X-Meter-Call-Id"]
            assert await r.read() == CHAT_JSON
    rec = (await proxy.collector.wait_for(1))[0]
    assert (rec.outcome, rec.input_tokens, rec.output_tokens) == ("ok", 2310, 7)


async def test_several_mib_sse_line_passes(upstream: FakeUpstream, proxy: Proxy) -> None:
    big = ("x" * (3 << 20))
    event = ('event: response.completed\ndata: {"type":"response.completed","response":'
             '{"id":"resp_big","status":"completed","model":"gpt-5","output":[{"type":"message",'
             '"content":[{"type":"output_text","text":"' + big + '"}]}],"usage":{"input_tokens":'
             '5,"output_tokens":900000,"total_tokens":900005}}}\n\n').encode()
    parts = [event[i:i + 65536] for i in range(0, len(event), 65536)]
    upstream.on("/v1/responses", Reply(parts, headers=SSE))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/responses", json={"stream": True}) as r:
            assert await r.read() == event
    (rec,) = await proxy.collector.wait_for(1)
    assert (rec.input_tokens, rec.output_tokens) == (5, 900000)


async def test_header_hygiene_both_ways(upstream: FakeUpstream, proxy: Proxy) -> None:
    async def reply(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        return aiohttp.web.Response(body=b"{}", headers={
            "Content-Type": "application/json", "X-Upstream": "kept",
            "Proxy-Authenticate": "Basic", "Trailer": "X-Checksum", "X-Secret-Hop": "dropped",
            "Connection": "X-Secret-Hop"})

    upstream.on("/v1/chat/completions", reply)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/chat/completions?api-version=2024-10-21",
                          data=b"{}", headers={
                              "Authorization": "Bearer sk-test", "Connection": "X-Drop-Me",
                              "X-Drop-Me": "1", "Keep-Alive": "timeout=5", "TE": "trailers",
                              "Proxy-Authorization": "Basic abc", "X-Meter-Agent": "alice",
                              "X-Meter-Session": "s-1", "X-Keep": "yes"}) as r:
            assert r.status == 200
            assert r.headers["X-Upstream"] == "kept"
            for h in ("Proxy-Authenticate", "Trailer", "X-Secret-Hop"):
                assert h not in r.headers
    seen = upstream.requests[-1]
    names = {k.lower() for k in seen.headers}
    assert "x-keep" in names and seen.headers["Authorization"] == "Bearer sk-test"
    assert not {"x-drop-me", "keep-alive", "te", "proxy-authorization"} & names
    assert not any(n.startswith("x-meter-") for n in names)
    assert seen.headers["Host"] == upstream.url.split("://")[1]
    assert seen.query == "api-version=2024-10-21"
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.agent == "alice" and rec.session == "s-1"


async def test_redirects_are_never_followed(upstream: FakeUpstream, proxy: Proxy) -> None:
    upstream.on("/v1/models", Reply([b""], status=302,
                                    headers={"Location": "http://127.0.0.1:9/elsewhere"}))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/openai/v1/models", allow_redirects=False) as r:
            assert r.status == 302
            assert r.headers["Location"] == "http://127.0.0.1:9/elsewhere"
    assert [q.path for q in upstream.requests] == ["/v1/models"]


async def test_gzip_response_arrives_intact_and_is_metered(upstream: FakeUpstream,
                                                           proxy: Proxy) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON], gzip=True))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/chat/completions", json={},
                          headers={"Accept-Encoding": "gzip"}) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert await r.read() == CHAT_JSON
    (rec,) = await proxy.collector.wait_for(1)
    assert (rec.input_tokens, rec.output_tokens) == (2310, 7)
    assert upstream.requests[-1].headers["Accept-Encoding"] == "gzip"


async def test_no_accept_encoding_is_added(upstream: FakeUpstream, proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/chat/completions", data=b"{}",
                          skip_auto_headers=("Accept-Encoding", "User-Agent")) as r:
            await r.read()
    headers = {k.lower() for k in upstream.requests[-1].headers}
    assert "accept-encoding" not in headers and "user-agent" not in headers


async def test_unknown_upstream_path_still_recorded(upstream: FakeUpstream, start_proxy:
                                                    StartProxy) -> None:
    proxy = await start_proxy()
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/moderations", data=b"{}") as r:
            assert r.status == 200
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.operation == "other" and rec.usage_source == "none" and rec.cost_usd is None


async def test_slow_client_holds_the_upstream_back(upstream: FakeUpstream, proxy: Proxy) -> None:
    """Backpressure: while the client reads nothing, the upstream cannot get far ahead, so
    the proxy never holds the stream in memory; once the client reads, everything arrives."""
    chunk = b"data: " + b"y" * (256 << 10) + b"\n\n"
    total = 160  # 40 MiB in all
    upstream.on("/v1/chat/completions", Reply([chunk] * total, headers=SSE))
    got = 0
    async with aiohttp.ClientSession(read_bufsize=1 << 16) as s:
        async with s.post(f"{proxy.url}/openai/v1/chat/completions", json={}) as r:
            got += len(await r.content.readany())
            await asyncio.sleep(1.0)  # a stalled client
            ahead = len(upstream.sent)
            while data := await r.content.readany():
                got += len(data)
    assert ahead < total // 2, f"upstream sent {ahead} of {total} chunks to a stalled client"
    assert got == len(chunk) * total
    assert len(upstream.sent) == total


async def test_a_gzip_request_body_reaches_the_upstream_as_sent_and_is_metered(
        upstream: FakeUpstream, proxy: Proxy) -> None:
    import gzip

    doc = {"model": "gpt-4o", "user": "u-7",
           "messages": [{"role": "user", "content": "hello there"}]}
    body = gzip.compress(json.dumps(doc).encode())
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/chat/completions", data=body,
                          headers={"Content-Encoding": "gzip",
                                   "Content-Type": "application/json"}) as r:
            assert r.status == 200
    (seen,) = upstream.requests
    assert seen.headers["Content-Encoding"] == "gzip"
    assert seen.body == body  # the client's gzip bytes, not re-encoded
    assert json.loads(gzip.decompress(seen.body)) == doc
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.request_model == "gpt-4o" and rec.end_user == "u-7" and rec.outcome == "ok"


async def test_an_invalid_or_bomb_gzip_body_is_forwarded_without_a_traceback(
        upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    import gzip

    proxy = await start_proxy(server={"max_body_bytes": 1 << 20})
    bomb = gzip.compress(b'{"model":"' + b"a" * (64 << 20) + b'"}')  # 64 MiB from ~65 KiB
    assert len(bomb) < 1 << 20
    upstream.on("/v1/chat/completions", Reply([CHAT_JSON]))
    bodies = (b"\x1f\x8b not gzip at all", bomb)
    async with aiohttp.ClientSession() as s:
        for body in bodies:
            async with s.post(f"{proxy.url}/openai/v1/chat/completions", data=body,
                              headers={"Content-Encoding": "gzip",
                                       "Content-Type": "application/json"}) as r:
                assert r.status == 200  # the upstream's answer, whatever it made of it
    assert [r.body for r in upstream.requests] == list(bodies)
    recs = await proxy.collector.wait_for(2)
    assert all(r.request_model is None and r.outcome == "ok" for r in recs)
    assert all(r.input_tokens == 2310 for r in recs)  # the provider's usage still counts
