"""proxy.idle: the upstream idle timeout of a response body, on real aiohttp streams."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol

from proxy.idle import IdleWatch


def _stream(loop: asyncio.AbstractEventLoop) -> aiohttp.StreamReader:
    return aiohttp.StreamReader(BaseProtocol(loop), 2 ** 16, loop=loop)


async def test_a_body_received_whole_arms_no_timer() -> None:
    loop = asyncio.get_running_loop()
    content = _stream(loop)
    content.feed_data(b'{"ok": true}')
    content.feed_eof()
    watch = IdleWatch(loop, 0.01, content)
    assert watch._handle is None
    assert await content.read() == b'{"ok": true}'  # never failed by a timeout
    watch.cancel()


async def _upstream(aiohttp_server: Any, gaps: list[float], done: asyncio.Event) -> str:
    """A real server whose body's chunks come after `gaps` seconds each, then waits for
    `done` before ending the body."""

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i, gap in enumerate(gaps):
            await asyncio.sleep(gap)  # the upstream's own pace, what the watch measures
            await resp.write(f"chunk {i}\n".encode())
        await done.wait()
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/"))


async def test_a_silent_upstream_fails_the_read_after_the_limit(aiohttp_server: Any) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    url = await _upstream(aiohttp_server, [0.0], done)
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        assert await resp.content.readline() == b"chunk 0\n"
        watch = IdleWatch(loop, 0.05, resp.content)
        assert watch._handle is not None  # the body is still coming: armed
        with pytest.raises(aiohttp.ServerTimeoutError):
            await asyncio.wait_for(resp.content.readany(), 5)  # bounded; fires at 0.05 s
        watch.cancel()
        done.set()


async def test_chunks_in_time_keep_the_body_alive(aiohttp_server: Any) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    url = await _upstream(aiohttp_server, [0.0, 0.4, 0.4, 0.4], done)
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        watch = IdleWatch(loop, 1.0, resp.content)  # 1.2 s in all, each gap under 1 s
        got = []
        while len(got) < 4:
            got.append(await asyncio.wait_for(resp.content.readline(), 5))
            watch.last = loop.time()  # what the relay stamps for each chunk
        done.set()
        assert got == [f"chunk {i}\n".encode() for i in range(4)]
        assert await asyncio.wait_for(resp.content.read(), 5) == b""
        watch.cancel()
        assert watch._handle is None
