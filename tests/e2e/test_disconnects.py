"""Every ending: the status and JSON body the client gets, and exactly one record."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import FakeUpstream, Proxy, Reply, StartProxy, free_port, served

SSE = {"Content-Type": "text/event-stream"}


async def post(url: str, **kw: object) -> tuple[int, dict[str, object], str]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, **kw) as r:  # type: ignore[arg-type]
            return r.status, await r.json(), r.headers.get("X-Meter-Call-Id", "")


async def test_unknown_upstream_is_404_listing_known(proxy: Proxy) -> None:
    status, body, call_id = await post(f"{proxy.url}/nosuch/v1/chat/completions", json={})
    assert status == 404
    err = body["error"]
    assert isinstance(err, dict) and err["type"] == "unknown_upstream"
    assert "openai" in str(err["message"]) and "anthropic" in str(err["message"])
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.outcome == "rejected" and rec.call_id == call_id and rec.status_code == 404


async def test_unreachable_upstream_is_502(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(upstreams={"dead": {"url": f"http://127.0.0.1:{free_port()}"}})
    status, body, _ = await post(f"{proxy.url}/dead/v1/chat/completions", json={})
    assert status == 502 and body["error"]["type"] == "upstream_unreachable"  # type: ignore
    await asyncio.sleep(0.1)
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.outcome == "unreachable" and len(proxy.collector.records) == 1


async def test_upstream_timeout_is_504(upstream: FakeUpstream, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(server={"idle_timeout_seconds": 0.3})
    upstream.on("/v1/chat/completions", Reply(first_delay=2.0))
    t = time.monotonic()
    status, body, _ = await post(f"{proxy.url}/openai/v1/chat/completions", json={})
    assert status == 504 and body["error"]["type"] == "upstream_timeout"  # type: ignore
    assert time.monotonic() - t < 1.5
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.outcome == "timeout"


async def test_upstream_silent_mid_stream_is_a_timeout(upstream: FakeUpstream,
                                                      start_proxy: StartProxy) -> None:
    proxy = await start_proxy(server={"idle_timeout_seconds": 0.3})
    chunks = [b'data: {"id":"c","model":"gpt-4o","choices":[{"delta":{"content":"Hi"}}]}\n\n',
              b"data: [DONE]\n\n"]
    upstream.on("/v1/chat/completions", Reply(chunks, headers=SSE, delay=3.0))
    received = b""
    t = time.monotonic()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                              json={"model": "gpt-4o", "stream": True}) as r:
                async for chunk in r.content.iter_any():
                    received += chunk
    assert 0.3 <= time.monotonic() - t < 1.5
    assert received == chunks[0]  # what came, came; then a broken end, no forged [DONE]
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.outcome == "timeout" and rec.error == "upstream idle timeout mid-response"


async def test_idle_timeout_is_between_bytes_not_a_deadline(upstream: FakeUpstream,
                                                            start_proxy: StartProxy) -> None:
    proxy = await start_proxy(server={"idle_timeout_seconds": 0.3})
    chunks = [b"data: {}\n\n"] * 8  # 8 x 0.1 s: the stream outlasts the timeout
    upstream.on("/v1/chat/completions", Reply(chunks, headers=SSE, delay=0.1))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/chat/completions", json={}) as r:
            assert await r.read() == b"".join(chunks)
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.outcome == "ok" and rec.duration_ms > 600


async def test_a_slow_client_is_not_an_idle_upstream(upstream: FakeUpstream,
                                                     start_proxy: StartProxy) -> None:
    """The proxy blocked on writing to a client that stopped reading is not upstream
    silence: the call ends ok once the client reads on, however long it paused."""
    proxy = await start_proxy(server={"idle_timeout_seconds": 0.3})
    chunks = [bytes([65 + i % 26]) * (256 << 10) for i in range(96)]  # 24 MiB at once
    upstream.on("/v1/files/big", Reply(chunks, headers={"Content-Type": "text/plain"}))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/openai/v1/files/big") as r:
            first = await r.content.readany()
            await asyncio.sleep(1.0)
            rest = await r.read()
    assert first + rest == b"".join(chunks)
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.outcome == "ok"


async def test_oversize_body_is_413_and_nothing_goes_upstream(upstream: FakeUpstream,
                                                              start_proxy: StartProxy) -> None:
    proxy = await start_proxy(server={"max_body_bytes": 1024})
    status, body, _ = await post(f"{proxy.url}/openai/v1/chat/completions",
                                 data=b"x" * 4096)
    assert status == 413 and body["error"]["type"] == "request_too_large"  # type: ignore
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.outcome == "rejected"
    assert upstream.requests == []


async def test_client_abort_closes_upstream_within_a_second(upstream: FakeUpstream,
                                                            proxy: Proxy) -> None:
    chunks = [b'data: {"choices":[{"delta":{"content":"tok"}}]}\n\n'] * 200
    upstream.on("/v1/chat/completions", Reply(chunks, headers=SSE, delay=0.05))
    async with aiohttp.ClientSession() as s:
        resp = await s.post(f"{proxy.url}/openai/v1/chat/completions", json={"stream": True})
        await resp.content.readany()
        aborted = time.monotonic()
        resp.close()
    await asyncio.wait_for(upstream.disconnected.wait(), 1.0)
    assert time.monotonic() - aborted < 1.0
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.outcome == "client_aborted"
    assert rec.usage_source == "estimated" and (rec.output_tokens or 0) > 0


async def test_upstream_cut_mid_stream_breaks_the_client_stream(upstream: FakeUpstream,
                                                               proxy: Proxy) -> None:
    chunks = [b'data: {"id":"c","model":"gpt-4o","choices":[{"delta":{"content":"Hel"}}]}\n\n',
              b'data: {"id":"c","model":"gpt-4o","choices":[{"delta":{"content":"lo"}}]}\n\n']
    upstream.on("/v1/chat/completions", Reply(chunks, headers=SSE, cut=True))
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                              json={"model": "gpt-4o", "stream": True,
                                    "messages": [{"role": "user", "content": "hi"}]}) as r:
                async for chunk in r.content.iter_any():
                    received += chunk
    assert b"[DONE]" not in received
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.outcome == "upstream_aborted"
    assert rec.usage_source == "estimated" and rec.input_tokens and rec.output_tokens


async def test_upstream_http_error_is_passed_through(upstream: FakeUpstream,
                                                     proxy: Proxy) -> None:
    err = {"error": {"message": "bad", "type": "invalid_request_error", "code": None}}
    upstream.on("/v1/chat/completions", Reply([json.dumps(err).encode()], status=400))
    status, body, _ = await post(f"{proxy.url}/openai/v1/chat/completions", json={})
    assert status == 400 and body == err
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.outcome == "upstream_error" and rec.status_code == 400


async def test_sigterm_lets_the_stream_finish_then_exits_zero(upstream: FakeUpstream,
                                                              tmp_path: Path) -> None:
    chunks = [f'data: {{"n":{i}}}\n\n'.encode() for i in range(10)] + [b"data: [DONE]\n\n"]
    upstream.on("/v1/chat/completions", Reply(chunks, headers=SSE, delay=0.1))
    config = (f"upstreams: {{openai: {{url: '{upstream.url}'}}}}\n"
              f"ledger: {{path: '{tmp_path / 'l.db'}'}}\n")
    async with served(tmp_path, config) as (proc, port):
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/openai/v1/chat/completions",
                              json={"stream": True}) as r:
                first = await r.content.readany()
                os.kill(proc.pid, signal.SIGTERM)
                rest = await r.read()
        assert first + rest == b"".join(chunks)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    conn = sqlite3.connect(tmp_path / "l.db")
    assert conn.execute("SELECT outcome FROM llm_usage").fetchall() == [("ok",)]
    conn.close()


async def test_a_client_that_leaves_after_the_end_of_stream_is_not_an_abort(
        upstream: FakeUpstream, proxy: Proxy) -> None:
    """The openai SDK closes the connection on [DONE]; the upstream's body ends later."""
    done = asyncio.Event()

    async def slow_close(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers=SSE)
        await resp.prepare(request)
        for chunk in (b'data: {"id":"c","model":"gpt-4o","choices":[{"delta":'
                      b'{"content":"Hi"},"finish_reason":null}]}\n\n',
                      b'data: {"id":"c","model":"gpt-4o","choices":[{"delta":{},'
                      b'"finish_reason":"stop"}]}\n\n',
                      b'data: {"id":"c","model":"gpt-4o","choices":[],"usage":'
                      b'{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}\n\n',
                      b"data: [DONE]\n\n"):
            await resp.write(chunk)
        await done.wait()  # the body has not ended when the client leaves
        return resp

    upstream.on("/v1/chat/completions", slow_close)
    async with aiohttp.ClientSession() as s:
        resp = await s.post(f"{proxy.url}/openai/v1/chat/completions",
                            json={"model": "gpt-4o", "stream": True,
                                  "messages": [{"role": "user", "content": "hi"}]})
        got = b""
        for _ in range(100):  # bounded: a few chunks are expected
            chunk = await asyncio.wait_for(resp.content.readany(), 5)
            got += chunk
            if b"[DONE]" in got or not chunk:
                break
        assert b"[DONE]" in got
        resp.close()
    (rec,) = await proxy.collector.wait_for(1)
    done.set()
    assert rec.outcome == "ok" and rec.error is None
    assert rec.usage_source == "reported" and rec.input_tokens == 9


@pytest.mark.parametrize("expect", [True, False])
async def test_an_oversize_body_is_refused_before_it_is_read(upstream: FakeUpstream,
                                                             start_proxy: StartProxy,
                                                             expect: bool) -> None:
    """A 40 MiB Content-Length gets 413 at once: no 100 Continue, no body read first."""
    proxy = await start_proxy(server={"max_body_bytes": 1 << 20})
    reader, writer = await asyncio.open_connection(proxy.server.host, proxy.server.port)
    head = (b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 41943040\r\n")
    writer.write(head + (b"Expect: 100-continue\r\n" if expect else b"") + b"\r\n"
                 + (b"" if expect else b"{" * 1000))
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(400), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"100 Continue" not in answer
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.outcome == "rejected" and rec.status_code == 413
    assert upstream.requests == []


async def test_a_client_trickling_its_headers_is_closed_by_the_keepalive_timeout(
        start_proxy: StartProxy) -> None:
    """Slowloris: a head sent a byte at a time never holds a socket past the timeout."""
    proxy = await start_proxy(server={"keepalive_timeout_seconds": 1})
    reader, writer = await asyncio.open_connection(proxy.server.host, proxy.server.port)
    started = time.monotonic()
    closed_after = None
    for byte in b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 40:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
            if await asyncio.wait_for(reader.read(100), 0.2) == b"":
                closed_after = time.monotonic() - started
                break
        except TimeoutError:
            continue
        except ConnectionError:
            closed_after = time.monotonic() - started
            break
    writer.close()
    assert closed_after is not None and closed_after < 3


async def test_shutdown_stays_within_the_drain_and_says_it_is_draining(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    """A stream longer than the drain: /readyz 503 while the listener is still open, exit
    within drain_seconds (it overran by 2.3 s), the cut call recorded as cut by us."""
    chunks = [f'data: {{"n":{i}}}\n\n'.encode() for i in range(100)]
    upstream.on("/v1/chat/completions", Reply(chunks, headers=SSE, delay=0.3))
    config = (f"upstreams: {{openai: {{url: '{upstream.url}'}}}}\n"
              f"ledger: {{path: '{tmp_path / 'l.db'}'}}\nserver: {{drain_seconds: 3}}\n")
    async with served(tmp_path, config) as (proc, port):
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/openai/v1/chat/completions",
                              json={"stream": True}) as r:
                await r.content.readany()
                os.kill(proc.pid, signal.SIGTERM)
                signalled = time.monotonic()
                statuses = []
                for _ in range(40):  # until the signal is handled (the window is 1 s)
                    async with s.get(f"http://127.0.0.1:{port}/readyz") as ready:
                        statuses.append(ready.status)
                    if ready.status == 503:
                        break
                    await asyncio.sleep(0.02)
                assert statuses[-1] == 503
                with pytest.raises(aiohttp.ClientPayloadError):
                    await r.read()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert time.monotonic() - signalled < 3 + 0.5  # the drain, and the exit itself
    conn = sqlite3.connect(tmp_path / "l.db")
    rows = conn.execute("SELECT outcome, error FROM llm_usage").fetchall()
    conn.close()
    assert rows == [("timeout", "cut at shutdown: drain deadline")]


async def test_slow_heads_get_408_and_connections_are_bounded(upstream: FakeUpstream,
                                                              tmp_path: Path) -> None:
    """The served process (tokenbooth serve): a connection that has not sent its request
    head in time gets 408 and is closed; past max_client_connections a new connection is
    closed at once; both are counted; ordinary calls go on."""
    upstream.on("/v1/chat/completions", Reply([b'{"ok": true}']))
    config = (f"upstreams: {{openai: {{url: '{upstream.url}'}}}}\n"
              f"ledger: {{path: '{tmp_path / 'l.db'}'}}\n"
              f"server: {{header_timeout_seconds: 1, max_client_connections: 4, "
              f"max_connections_per_client: 10}}\n")  # the total cap, not one client's
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    async with served(tmp_path, config) as (_, port):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Slow: a")
            await writer.drain()
            started = time.monotonic()
            answer = await asyncio.wait_for(reader.read(200), 5)
            assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 3
            assert await asyncio.wait_for(reader.read(10), 5) == b""  # and closed
            writer.close()
            for _ in range(4):
                conns.append(await asyncio.open_connection("127.0.0.1", port))
            extra_r, extra_w = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(extra_r.read(10), 5) == b""  # closed at once
            extra_w.close()
            for _, w in conns:
                w.close()
            conns.clear()
            async with aiohttp.ClientSession() as s:
                status = None
                for _ in range(50):  # the closed connections leave the server's table
                    try:
                        async with s.post(f"http://127.0.0.1:{port}/openai/v1/chat/completions",
                                          json={}) as r:
                            status = r.status
                            break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)
                assert status == 200
                async with s.get(f"http://127.0.0.1:{port}/metrics") as m:
                    text = await m.text()
            refused = {m[1]: float(m[2]) for m in re.finditer(
                r'tokenbooth_client_connections_refused_total\{reason="(\w+)"\} (\S+)', text)}
            assert refused["header_timeout"] == 1
            assert refused["max_client_connections"] >= 1  # the extra one, and early retries
        finally:
            for _, w in conns:
                w.close()


async def test_one_client_address_cannot_take_every_connection(upstream: FakeUpstream,
                                                               tmp_path: Path) -> None:
    """A client holding silent sockets up to max_connections_per_client gets its next one
    closed at once (counted); another address still gets served; a socket it closes frees
    a place for it again."""
    upstream.on("/v1/chat/completions", Reply([b'{"ok": true}']))
    config = (f"upstreams: {{openai: {{url: '{upstream.url}'}}}}\n"
              f"ledger: {{path: '{tmp_path / 'l.db'}'}}\n"
              f"server: {{max_client_connections: 100, max_connections_per_client: 3}}\n")
    greedy = ("127.0.0.2", 0)  # all of 127/8 is loopback: a second client address
    held: list[asyncio.StreamWriter] = []
    async with served(tmp_path, config) as (_, port):
        try:
            for _ in range(3):
                held.append((await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=greedy))[1])
            extra_r, extra_w = await asyncio.open_connection("127.0.0.1", port,
                                                             local_addr=greedy)
            assert await asyncio.wait_for(extra_r.read(10), 5) == b""  # closed at once
            extra_w.close()
            async with aiohttp.ClientSession() as s:  # from 127.0.0.1: served
                async with s.post(f"http://127.0.0.1:{port}/openai/v1/chat/completions",
                                  json={}) as r:
                    assert r.status == 200
                held.pop().close()
                status = None
                for _ in range(50):  # until the server has seen the close
                    conn = aiohttp.TCPConnector(local_addr=greedy, force_close=True)
                    async with aiohttp.ClientSession(connector=conn) as g:
                        try:
                            async with g.post(f"http://127.0.0.1:{port}/openai/v1/chat/"
                                              "completions", json={}) as r:
                                status = r.status
                                break
                        except aiohttp.ClientError:
                            await asyncio.sleep(0.1)
                assert status == 200
                async with s.get(f"http://127.0.0.1:{port}/metrics") as m:
                    text = await m.text()
            refused = {m[1]: float(m[2]) for m in re.finditer(
                r'tokenbooth_client_connections_refused_total\{reason="(\w+)"\} (\S+)', text)}
            assert refused["max_connections_per_client"] >= 1
            assert refused["max_client_connections"] == 0
        finally:
            for w in held:
                w.close()
