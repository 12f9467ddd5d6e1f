"""Stream-usage injection: the meter gets exact usage, the client gets the stream it would
have received without the flag."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.conftest import FakeUpstream, Proxy, Sdks

DELTAS = ["Lis", "bon", "."]


def openai_like(reject_stream_options: bool = False) -> Any:
    """Emulates OpenAI: with include_usage every chunk gets "usage":null and a final
    choices:[] chunk carries the usage; without it there is no usage at all."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        opts = body.get("stream_options") or {}
        if reject_stream_options and "stream_options" in body:
            return web.json_response({"error": {"message": "Unrecognized request argument "
                                                           "supplied: stream_options",
                                                "type": "invalid_request_error"}}, status=400)
        usage = opts.get("include_usage") is True
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "chatcmpl-inj", "object": "chat.completion.chunk", "created": 1,
                "model": "gpt-4o-mini-2024-07-18"}
        chunks = [{**base, "choices": [{"index": 0, "delta": {"content": d},
                                        "finish_reason": None}]} for d in DELTAS]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        for c in chunks:
            if usage:
                c["usage"] = None
            await resp.write(f"data: {json.dumps(c, separators=(',', ':'))}\n\n".encode())
        if usage:
            final = {**base, "choices": [], "usage": {
                "prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0}}}
            await resp.write(f"data: {json.dumps(final, separators=(',', ':'))}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    return handler


ARGS = {"model": "gpt-4o-mini", "stream": True,
        "messages": [{"role": "user", "content": "Capital of Portugal?"}]}


async def test_injected_stream_is_unchanged_for_the_client(upstream: FakeUpstream, proxy: Proxy,
                                                           sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", openai_like())
    direct = [c.model_dump(exclude_unset=True) async for c in
              await sdk.openai(f"{upstream.url}/v1").chat.completions.create(**ARGS)]
    via = [c.model_dump(exclude_unset=True) async for c in
           await sdk.openai(f"{proxy.url}/openai/v1").chat.completions.create(**ARGS)]
    assert via == direct
    assert all("usage" not in c for c in via)
    sent = json.loads(upstream.requests[-1].body)
    assert sent["stream_options"] == {"include_usage": True}
    (rec,) = await proxy.collector.wait_for(1)
    assert (rec.input_tokens, rec.output_tokens, rec.usage_source) == (21, 4, "reported")
    assert rec.estimator is None and rec.cost_usd is not None


async def test_injected_bytes_equal_the_plain_stream(upstream: FakeUpstream,
                                                     proxy: Proxy) -> None:
    import aiohttp

    upstream.on("/v1/chat/completions", openai_like())
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{upstream.url}/v1/chat/completions", json=ARGS) as r:
            plain = await r.read()
        async with s.post(f"{proxy.url}/openai/v1/chat/completions", json=ARGS) as r:
            via = await r.read()
    assert via == plain


async def test_client_include_usage_passes_untouched(upstream: FakeUpstream, proxy: Proxy,
                                                     sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", openai_like())
    args = {**ARGS, "stream_options": {"include_usage": True}}
    via = [c async for c in await sdk.openai(f"{proxy.url}/openai/v1")
           .chat.completions.create(**args)]
    assert via[-1].usage is not None and via[-1].usage.prompt_tokens == 21
    assert json.loads(upstream.requests[-1].body) == args


async def test_400_on_injection_resends_once_and_remembers(upstream: FakeUpstream,
                                                           proxy: Proxy, sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", openai_like(reject_stream_options=True))
    client = sdk.openai(f"{proxy.url}/openai/v1")
    first = [c async for c in await client.chat.completions.create(**ARGS)]
    second = [c async for c in await client.chat.completions.create(**ARGS)]
    assert len(first) == len(second) == 4
    bodies = [json.loads(r.body) for r in upstream.requests]
    assert ["stream_options" in b for b in bodies] == [True, False, False]
    recs = await proxy.collector.wait_for(2)
    assert all(r.usage_source == "estimated" and r.outcome == "ok" for r in recs)
    assert recs[0].output_tokens == recs[1].output_tokens == 3  # "Lisbon." in o200k
