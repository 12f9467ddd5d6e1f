"""Benchmark upstream: OpenAI chat JSON and SSE, Anthropic messages SSE.

20 ms before the response starts; streams send 20 chunks 5 ms apart. Usage is reported
the way each provider reports it, so metering does its full work.
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvloop
from aiohttp import web

LATENCY = 0.020
CHUNKS = 20
GAP = 0.005

CHAT_JSON = json.dumps({
    "id": "chatcmpl-b", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Lisbon is the capital."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127,
              "prompt_tokens_details": {"cached_tokens": 0}}}).encode()


def chat_chunk(i: int, usage: bool) -> bytes:
    doc: dict[str, object] = {
        "id": "chatcmpl-b", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "delta": {"content": f"token{i} "}, "finish_reason": None}]}
    if usage:
        doc["usage"] = None
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


def chat_usage() -> bytes:
    doc = {"id": "chatcmpl-b", "object": "chat.completion.chunk", "created": 1,
           "model": "gpt-4o-2024-08-06", "choices": [],
           "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160}}
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\ndata: [DONE]\n\n"


ANTHROPIC_START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_b",'
                   b'"type":"message","role":"assistant","model":"claude-sonnet-4-20250514",'
                   b'"content":[],"usage":{"input_tokens":120,"cache_read_input_tokens":0,'
                   b'"cache_creation_input_tokens":0,"output_tokens":1}}}\n\n')


def anthropic_delta(i: int) -> bytes:
    return (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"token' + str(i).encode() + b' "}}\n\n')


ANTHROPIC_END = (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
                 b'"end_turn"},"usage":{"output_tokens":40}}\n\nevent: message_stop\n'
                 b'data: {"type":"message_stop"}\n\n')


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    await asyncio.sleep(LATENCY)
    if not body.get("stream"):
        return web.Response(body=CHAT_JSON, content_type="application/json")
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(CHUNKS):
        if i:
            await asyncio.sleep(GAP)
        await resp.write(chat_chunk(i, usage))
    if usage:
        await resp.write(chat_usage())
    else:
        await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def messages(request: web.Request) -> web.StreamResponse:
    await request.read()
    await asyncio.sleep(LATENCY)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(ANTHROPIC_START)
    for i in range(CHUNKS - 2):
        await asyncio.sleep(GAP)
        await resp.write(anthropic_delta(i))
    await asyncio.sleep(GAP)
    await resp.write(ANTHROPIC_END)
    await resp.write_eof()
    return resp


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/messages", messages)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
