"""The upstream leg's own HTTP/1.1 client (proxy/upstream/), against real servers on
127.0.0.1: an aiohttp app for well-formed answers, a hand-driven `asyncio.start_server`
(`RawServer`) for malformed or hand-timed ones, which records every connection and the
request heads it received. What is checked is what the forwarder relies on: the answer's
status, headers and body as they arrive, the request head aiohttp would have sent, aiohttp's
exceptions for each kind of failure, keep-alive reuse, the `limit`, back-pressure, the idle
timeout, TLS, and closing."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.upstream import UpstreamPool, UpstreamResponse, handles
from tests.conftest import FakeUpstream, free_port, wait_until

MakePool = Callable[..., UpstreamPool]


# --- a hand-driven server


class RawConn:
    """One connection the raw server accepted: its peer port, the request heads (and
    bodies) read on it in order, and `ended` once the client closed it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 changed: Callable[[], None]) -> None:
        self.reader, self.writer = reader, writer
        self.port: int = writer.get_extra_info("peername")[1]
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.ended = False
        self._changed = changed

    @property
    def paths(self) -> list[str]:
        return [head.split(b" ", 2)[1].decode() for head in self.heads]

    async def next_request(self) -> bytes | None:
        """The next request's head (its body read too), or None once the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
            body = await self.reader.readexactly(int(length[1])) if length else b""
        except (asyncio.IncompleteReadError, ConnectionError):
            self.ended = True
            self._changed()
            return None
        self.heads.append(head)
        self.bodies.append(body)
        self._changed()
        return head

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


# answer(conn, head): write the answer; False closes the connection after it
Answer = Callable[[RawConn, bytes], Awaitable[bool]]


class RawServer:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.conns: list[RawConn] = []
        self._event = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    def url(self, path: str = "/") -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}{path}"

    def paths(self) -> list[str]:
        return [p for conn in self.conns for p in conn.paths]

    async def until(self, cond: Callable[[], bool], timeout: float = 2.0) -> None:
        """Until `cond()` holds, re-checked whenever a connection, a request or a close
        arrives; AssertionError after `timeout` seconds."""
        async def check() -> None:
            while not cond():
                self._event.clear()
                await self._event.wait()

        try:
            await asyncio.wait_for(check(), timeout)
        except TimeoutError:
            raise AssertionError(f"server state not reached within {timeout} s") from None

    def _changed(self) -> None:
        self._event.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = RawConn(reader, writer, self._changed)
        self.conns.append(conn)
        self._changed()
        try:
            while (head := await conn.next_request()) is not None:
                if not await self.answer(conn, head):
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.conns:
            conn.writer.transport.abort()  # each handler ends at its next read or write
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self._server.wait_closed()


def replying(data: bytes, keep: bool = True) -> Answer:
    async def answer(conn: RawConn, head: bytes) -> bool:
        await conn.send(data)
        return keep

    return answer


def ok(body: bytes = b"ok", head: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


StartRaw = Callable[[Answer], Awaitable[RawServer]]


@pytest.fixture
async def raw() -> AsyncIterator[StartRaw]:
    servers: list[RawServer] = []

    async def start(answer: Answer) -> RawServer:
        server = RawServer(answer)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def pools() -> AsyncIterator[MakePool]:
    """UpstreamPool(**kw), made in the test's loop and closed at its end."""
    made: list[UpstreamPool] = []

    def make(**kw: Any) -> UpstreamPool:
        pool = UpstreamPool(**kw)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.close()


async def read_all(resp: UpstreamResponse) -> bytes:
    return b"".join([chunk async for chunk in resp.content])


async def get(pool: UpstreamPool, url: str) -> bytes:
    """A whole GET: its body, the response released."""
    resp = await pool.request("GET", url, CIMultiDict(), None)
    body = await read_all(resp)
    resp.release()
    return body


def peer_port(request: web.Request) -> int:
    assert request.transport is not None
    return int(request.transport.get_extra_info("peername")[1])


# --- 1. a JSON answer, and keep-alive


async def test_a_json_answer_whole_and_its_connection_reused_unless_it_says_close(
        upstream: FakeUpstream, pools: MakePool) -> None:
    doc = {"id": "chatcmpl-1", "choices": [{"text": "x" * 100_000}]}  # several reads long
    payload = json.dumps(doc).encode()
    ports: list[int] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        ports.append(peer_port(request))
        resp = web.Response(status=201, reason="Made It", body=payload, headers=CIMultiDict([
            ("Content-Type", "application/json"), ("Set-Cookie", "a=1; Path=/"),
            ("X-Request-Id", "req-7"), ("Set-Cookie", "b=2; Path=/")]))
        if "close" in request.query:
            resp.force_close()
        return resp

    upstream.on("/v1/chat", answer)
    pool = pools()
    url = f"{upstream.url}/v1/chat"
    resp = await pool.request("POST", url, CIMultiDict({"Content-Type": "application/json"}),
                              b'{"model": "m"}')
    assert (resp.status, resp.reason) == (201, "Made It")
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["x-request-id"] == "req-7"
    assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert await read_all(resp) == payload
    assert resp.content.at_eof()
    resp.release()
    assert upstream.requests[0].body == b'{"model": "m"}'

    assert json.loads(await get(pool, url)) == doc
    assert ports[1] == ports[0]  # the same connection

    closing = await pool.request("GET", f"{url}?close=1", CIMultiDict(), None)
    assert closing.headers["Connection"] == "close"
    assert await read_all(closing) == payload
    closing.release()
    assert ports[2] == ports[0]
    assert await get(pool, url) == payload
    assert ports[3] != ports[0]  # the closed one was not taken again


async def test_an_answer_saying_close_is_not_reused_even_if_the_server_keeps_it_open(
        raw: StartRaw, pools: MakePool) -> None:
    server = await raw(replying(ok(head="Connection: close\r\n")))
    pool = pools()
    assert await get(pool, server.url("/one")) == b"ok"
    assert await get(pool, server.url("/two")) == b"ok"
    await server.until(lambda: server.conns[0].ended)  # the pool closed it
    assert [conn.paths for conn in server.conns] == [["/one"], ["/two"]]


@pytest.mark.parametrize("stray", [b"HTTP/1.1 200 OK\r\n", b"H"],
                         ids=["a partial head", "one byte"])
async def test_bytes_after_an_answer_in_the_same_read_keep_its_connection_from_reuse(
        raw: StartRaw, pools: MakePool, stray: bytes) -> None:
    """What follows a complete answer is no answer to anything: the parser is left inside
    it, so the connection must not carry the next call (aiohttp closes such a one too)."""
    async def answer(conn: RawConn, head: bytes) -> bool:
        await conn.send(ok() + stray if b" /one " in head else ok())  # one write, one read
        return True

    server = await raw(answer)
    pool = pools()
    assert await get(pool, server.url("/one")) == b"ok"
    assert await get(pool, server.url("/two")) == b"ok"
    assert [conn.paths for conn in server.conns] == [["/one"], ["/two"]]


async def test_a_blank_line_after_an_answer_leaves_its_connection_reusable(
        raw: StartRaw, pools: MakePool) -> None:
    server = await raw(replying(ok() + b"\r\n"))  # tolerated between messages
    pool = pools()
    assert await get(pool, server.url("/one")) == b"ok"
    assert await get(pool, server.url("/two")) == b"ok"
    assert [conn.paths for conn in server.conns] == [["/one", "/two"]]


# --- 2. the request head, as aiohttp sends it

TRICKY = "/v1/a b/%7e/x:y/%2F?q=a b&r=%7e&t=1:2"
HEADERS = [("X-Dup", "1"), ("Authorization", "Bearer sk-test"), ("X-Dup", "2"),
           ("Content-Type", "application/json")]


async def heads_from_both(server: RawServer, pool: UpstreamPool, method: str,
                          headers: list[tuple[str, str]], body: bytes | None
                          ) -> tuple[bytes, bytes]:
    """The head the server got from aiohttp for this call, and from the pool."""
    url = server.url(TRICKY)
    async with aiohttp.ClientSession(
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type")) as session:
        async with session.request(method, url, headers=CIMultiDict(headers),
                                   data=body) as r:
            await r.read()
    resp = await pool.request(method, url, CIMultiDict(headers), body)
    assert await read_all(resp) == b""
    resp.release()
    sent = [head for conn in server.conns for head in conn.heads]
    assert len(sent) == 2
    return sent[0], sent[1]


def lines(head: bytes) -> list[str]:
    return head.decode().split("\r\n")[1:-2]


@pytest.mark.parametrize(("method", "body"), [
    ("GET", None), ("POST", None), ("POST", b'{"model": "m"}'), ("PUT", b"x"),
    ("DELETE", None), ("OPTIONS", None), ("GET", b"q")])
async def test_the_request_head_is_what_aiohttp_sends(
        raw: StartRaw, pools: MakePool, method: str, body: bytes | None) -> None:
    server = await raw(replying(ok(b"")))
    headers = [h for h in HEADERS if h[0] != "Content-Type"]  # none given: none added
    from_aiohttp, from_pool = await heads_from_both(server, pools(), method, headers, body)
    assert from_pool == from_aiohttp
    target = from_pool.split(b"\r\n")[0].decode()
    assert target == f"{method} /v1/a%20b/~/x:y/%2F?q=a+b&r=~&t=1:2 HTTP/1.1"
    sent = lines(from_pool)
    assert sent[0] == server.url("").replace("http://", "Host: ")
    assert [h for h in sent if h.startswith("X-Dup")] == ["X-Dup: 1", "X-Dup: 2"]
    assert "Accept: */*" in sent
    assert not any(h.lower().startswith("content-type") for h in sent)
    length = [h for h in sent if h.startswith("Content-Length")]
    if body:
        assert length == [f"Content-Length: {len(body)}"]
    elif method in ("POST", "PUT", "DELETE"):
        assert length == ["Content-Length: 0"]
    else:
        assert length == []
    assert server.conns[-1].bodies == [body or b""]


async def test_a_given_host_accept_and_content_type_are_sent_instead(
        raw: StartRaw, pools: MakePool) -> None:
    server = await raw(replying(ok(b"")))
    # where a signed request carries it: after the others
    given = [*HEADERS, ("Accept", "text/event-stream"),
             ("host", "bedrock-runtime.us-east-1.amazonaws.com")]
    from_aiohttp, from_pool = await heads_from_both(server, pools(), "POST", given, b"{}")
    assert from_pool.split(b"\r\n")[0] == from_aiohttp.split(b"\r\n")[0]
    assert sorted(lines(from_pool)) == sorted(lines(from_aiohttp))
    sent = lines(from_pool)
    assert [h for h in sent if h.lower().startswith(("host:", "accept:", "content-type:"))] \
        == ["Content-Type: application/json", "Accept: text/event-stream",
            "host: bedrock-runtime.us-east-1.amazonaws.com"]


@pytest.mark.parametrize("header", [("X-Note", "a\r\nX-Injected: 1"), ("X-Note", "a\nb"),
                                    ("X-A\r\nX-Injected", "1")],
                         ids=["CRLF in a value", "LF in a value", "CRLF in a name"])
async def test_a_newline_in_a_header_raises_and_sends_nothing(
        raw: StartRaw, pools: MakePool, header: tuple[str, str]) -> None:
    server = await raw(replying(ok()))
    pool = pools()
    with pytest.raises(ValueError):
        await pool.request("POST", server.url("/bad"), CIMultiDict([header]), b"{}")
    assert await get(pool, server.url("/good")) == b"ok"
    # the good call's head is the first thing the server received
    assert [(conn.paths, conn.bodies) for conn in server.conns] == [(["/good"], [b""])]


async def test_a_url_with_user_info_is_left_to_the_session(
        raw: StartRaw, pools: MakePool) -> None:
    """aiohttp sends a URL's user info as Basic auth; this client would drop it, so such a
    URL is not one it handles. An '@' after the host is an ordinary character."""
    assert not handles("POST", "http://user:secret@127.0.0.1:8000/v1/chat/completions")
    assert not handles("GET", "https://key@127.0.0.1/v1/models")
    server = await raw(replying(ok()))
    url = server.url("/v1/models/a@b?owner=x@y")
    assert handles("GET", url)
    assert await get(pools(), url) == b"ok"
    assert server.paths() == ["/v1/models/a@b?owner=x@y"]


# --- 3-5. bodies as they arrive


async def test_a_chunked_stream_yields_each_chunk_before_the_next_is_sent(
        upstream: FakeUpstream, pools: MakePool) -> None:
    chunks = [f'data: {{"n": {i}}}\n\n'.encode() for i in range(4)]
    sent: list[bytes] = []
    go = asyncio.Event()
    ports: list[int] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        ports.append(peer_port(request))
        if request.path.endswith("/again"):
            return web.Response(body=b"again")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for chunk in chunks:
            await resp.write(chunk)
            sent.append(chunk)
            await go.wait()  # until the test read it
            go.clear()
        await resp.write_eof()
        return resp

    upstream.on("/v1/stream", stream)
    upstream.on("/v1/stream/again", stream)
    pool = pools()
    resp = await pool.request("POST", f"{upstream.url}/v1/stream", CIMultiDict(), b"{}")
    assert resp.headers["Transfer-Encoding"] == "chunked"
    body = aiter(resp.content)
    for i, chunk in enumerate(chunks):
        assert await asyncio.wait_for(anext(body), 2) == chunk
        assert sent == chunks[: i + 1]  # the server is still holding the next one
        assert not resp.content.at_eof()
        go.set()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(body), 2)
    assert resp.content.at_eof()
    resp.release()
    assert await get(pool, f"{upstream.url}/v1/stream/again") == b"again"
    assert ports[1] == ports[0]


async def test_a_body_ended_by_the_connection_close_is_complete(
        raw: StartRaw, pools: MakePool) -> None:
    async def answer(conn: RawConn, head: bytes) -> bool:
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await conn.send(b"part two")
        return False  # the close ends the body

    server = await raw(answer)
    pool = pools()
    resp = await pool.request("GET", server.url("/"), CIMultiDict(), None)
    assert resp.status == 200
    assert await read_all(resp) == b"part one, part two"
    assert resp.content.at_eof()
    resp.release()
    resp = await pool.request("GET", server.url("/"), CIMultiDict(), None)
    assert await read_all(resp) == b"part one, part two"
    resp.release()
    assert len(server.conns) == 2


async def test_a_cut_body_yields_what_came_then_a_payload_error(
        raw: StartRaw, pools: MakePool) -> None:
    server = await raw(replying(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
                                keep=False))
    pool = pools()
    resp = await pool.request("POST", server.url("/"), CIMultiDict(), b"{}")
    body = aiter(resp.content)
    assert await asyncio.wait_for(anext(body), 2) == b"0123456789"
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(anext(body), 2)
    assert not resp.content.at_eof()
    resp.close()


# --- 6-8. answers that are not answers, and interim ones


async def test_a_server_closing_without_answering_is_server_disconnected(
        raw: StartRaw, pools: MakePool) -> None:
    server = await raw(replying(b"", keep=False))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await pools().request("POST", server.url("/"), CIMultiDict(), b"{}")


async def test_a_garbage_answer_is_a_client_response_error(
        raw: StartRaw, pools: MakePool) -> None:
    server = await raw(replying(b"NOT HTTP\r\n\r\n"))
    with pytest.raises(aiohttp.ClientResponseError):
        await pools().request("POST", server.url("/"), CIMultiDict(), b"{}")
    await server.until(lambda: server.conns[0].ended)  # and the connection is dropped


def big_head(size: int, end: bool) -> list[bytes]:
    """A status line and ~1 KiB headers up to `size` bytes (then the head's end and a
    body if `end`)."""
    parts = [b"HTTP/1.1 200 OK\r\n"]
    n = 0
    while sum(map(len, parts)) < size:
        parts.append(b"X-Pad-%d: %s\r\n" % (n, b"p" * 1000))
        n += 1
    if end:
        parts.append(b"Content-Length: 2\r\n\r\nok")
    return parts


@pytest.mark.parametrize("way", ["in pieces, never ending", "whole, in one write"])
async def test_a_head_over_64_kib_is_a_client_response_error(
        raw: StartRaw, pools: MakePool, way: str) -> None:
    async def answer(conn: RawConn, head: bytes) -> bool:
        if way == "whole, in one write":
            await conn.send(b"".join(big_head(70 * 1024, end=True)))
        else:
            for part in big_head(70 * 1024, end=False):
                await conn.send(part)
        return True  # left open: only the client ends it

    server = await raw(answer)
    with pytest.raises(aiohttp.ClientResponseError):
        resp = await pools().request("GET", server.url("/"), CIMultiDict(), None)
        resp.close()


async def test_a_small_head_ending_in_the_read_of_a_large_body_is_not_too_large(
        raw: StartRaw, pools: MakePool) -> None:
    """The head's blank line can arrive at the start of the next read, with the body: only
    the head's own bytes count against the 64 KiB, not the 100 KiB of body after them."""
    body = bytes(range(256)) * 400  # 100 KiB, no blank line in it
    go = asyncio.Event()

    async def answer(conn: RawConn, head: bytes) -> bool:
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body))
        await go.wait()  # until the pool has read that part on its own
        await conn.send(b"\r\n" + body)
        return True

    server = await raw(answer)
    pool = pools()
    call = asyncio.ensure_future(pool.request("GET", server.url("/"), CIMultiDict(), None))
    await wait_until(lambda: any(conn._head_bytes for conn in pool._busy), timeout=2,
                     what="the head's first part read")
    go.set()
    resp = await asyncio.wait_for(call, 2)
    assert resp.headers["Content-Length"] == str(len(body))
    assert await read_all(resp) == body
    resp.release()


async def test_no_head_within_the_timeout_is_a_timeout_and_the_connection_is_dropped(
        raw: StartRaw, pools: MakePool) -> None:
    """`timeout` bounds the wait for the answer's head (the forwarder's idle timeout);
    the connection it was sent on is never reused."""
    server = await raw(replying(b""))  # reads the request, never answers, stays open
    pool = pools()
    with pytest.raises(TimeoutError):
        await pool.request("POST", server.url("/"), CIMultiDict(), b"{}", timeout=0.05)
    await server.until(lambda: server.conns[0].ended)


async def test_nothing_listening_is_a_connector_error_with_the_refusal(
        pools: MakePool) -> None:
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await pools().request("POST", f"http://127.0.0.1:{free_port()}/v1/chat",
                              CIMultiDict(), b"{}")
    assert isinstance(caught.value.os_error, ConnectionRefusedError)


async def test_100_continue_then_200_gives_the_200(raw: StartRaw, pools: MakePool) -> None:
    async def answer(conn: RawConn, head: bytes) -> bool:
        await conn.send(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n")
        await conn.send(ok(b"final", head="X-Final: 1\r\n"))
        return True

    server = await raw(answer)
    pool = pools()
    resp = await pool.request("POST", server.url("/"), CIMultiDict(), b"{}")
    assert (resp.status, resp.reason) == (200, "OK")
    assert resp.headers["X-Final"] == "1" and "X-Interim" not in resp.headers
    assert await read_all(resp) == b"final"
    resp.release()
    assert await get(pool, server.url("/")) == b"final"
    assert len(server.conns) == 1


# --- 9. the limit


async def another_call(server: RawServer, pools: MakePool) -> None:
    """A whole call to `server` by another pool: once it is answered, any request already
    started by the pool under test had its turn to connect."""
    assert await get(pools(), server.url("/probe")) == b"ok"


async def test_limit_one_holds_a_second_request_until_the_first_is_released(
        raw: StartRaw, pools: MakePool) -> None:
    server = await raw(replying(ok()))
    pool = pools(limit=1)
    first = await pool.request("GET", server.url("/first"), CIMultiDict(), None)
    second = asyncio.ensure_future(
        pool.request("GET", server.url("/second"), CIMultiDict(), None))
    await waits_then_reuses(first, second, server, pools)


async def waits_then_reuses(first: UpstreamResponse, second: asyncio.Future[UpstreamResponse],
                            server: RawServer, pools: MakePool) -> None:
    """With one slot: `second` waits while `first` holds it (a probe from another pool
    gets through meanwhile), then goes out on the connection `first` gave back."""
    await another_call(server, pools)
    assert not second.done()
    assert server.paths() == ["/first", "/probe"] and len(server.conns) == 2
    assert await read_all(first) == b"ok"
    first.release()
    resp = await asyncio.wait_for(second, 2)
    assert await read_all(resp) == b"ok"
    resp.release()
    assert server.conns[0].paths == ["/first", "/second"]  # on the one given back


async def test_a_slot_not_free_within_the_connect_timeout_is_a_connect_timeout(
        raw: StartRaw, pools: MakePool) -> None:
    """As aiohttp's `connect` timeout: waiting for a free connection counts against it,
    and running out is a connector error carrying a TimeoutError (the forwarder's 504
    "did not accept a connection in time"), not the answer's deadline."""
    server = await raw(replying(ok()))
    pool = pools(limit=1, connect_timeout=0.05)
    first = await pool.request("GET", server.url("/first"), CIMultiDict(), None)
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await pool.request("GET", server.url("/second"), CIMultiDict(), None, timeout=30)
    assert isinstance(caught.value.os_error, TimeoutError)
    assert server.paths() == ["/first"]
    first.release()


async def test_limit_one_counts_a_connection_being_made(
        raw: StartRaw, pools: MakePool) -> None:
    """Two calls at once on a fresh pool: the second waits for the first's connection
    instead of opening another while the first is still connecting."""
    server = await raw(replying(ok()))
    pool = pools(limit=1)
    first = asyncio.ensure_future(
        pool.request("GET", server.url("/first"), CIMultiDict(), None))
    second = asyncio.ensure_future(
        pool.request("GET", server.url("/second"), CIMultiDict(), None))
    await waits_then_reuses(await asyncio.wait_for(first, 2), second, server, pools)


async def test_limit_one_a_waiter_whose_connection_fails_passes_the_slot_on(
        raw: StartRaw, pools: MakePool) -> None:
    """The slot a waiter was woken for is free again when its own connection fails: the
    next waiter gets it rather than waiting for a release that will never come."""
    server = await raw(replying(ok()))
    pool = pools(limit=1)
    first = await pool.request("GET", server.url("/first"), CIMultiDict(), None)
    refused = asyncio.ensure_future(
        pool.request("GET", f"http://127.0.0.1:{free_port()}/", CIMultiDict(), None))
    second = asyncio.ensure_future(
        pool.request("GET", server.url("/second"), CIMultiDict(), None))
    await another_call(server, pools)
    assert not refused.done() and not second.done()
    assert await read_all(first) == b"ok"
    first.release()  # the slot goes to the first waiter, whose connection is refused
    with pytest.raises(aiohttp.ClientConnectorError):
        await asyncio.wait_for(refused, 2)
    resp = await asyncio.wait_for(second, 2)
    assert await read_all(resp) == b"ok"
    resp.release()
    assert server.conns[0].paths == ["/first", "/second"]


async def test_limit_one_a_released_slot_goes_to_the_waiter_not_to_a_newcomer(
        raw: StartRaw, pools: MakePool) -> None:
    """Waiters are served in turn: a call that starts between a release and the woken
    waiter's turn to run queues behind it (else a waiter can be passed over again and
    again until its deadline)."""
    server = await raw(replying(ok()))
    pool = pools(limit=1)
    first = await pool.request("GET", server.url("/first"), CIMultiDict(), None)
    second = asyncio.ensure_future(
        pool.request("GET", server.url("/second"), CIMultiDict(), None))
    await another_call(server, pools)
    assert not second.done()
    assert await read_all(first) == b"ok"
    third = asyncio.ensure_future(  # its first step runs before the woken waiter's
        pool.request("GET", server.url("/third"), CIMultiDict(), None))
    first.release()
    resp = await asyncio.wait_for(second, 2)
    assert not third.done()
    assert await read_all(resp) == b"ok"
    resp.release()
    resp = await asyncio.wait_for(third, 2)
    assert await read_all(resp) == b"ok"
    resp.release()
    assert server.conns[0].paths == ["/first", "/second", "/third"]


@pytest.mark.parametrize("when", ["while waiting", "once handed the slot"])
async def test_limit_one_a_cancelled_waiter_does_not_take_the_slot(
        raw: StartRaw, pools: MakePool, when: str) -> None:
    server = await raw(replying(ok()))
    pool = pools(limit=1)
    first = await pool.request("GET", server.url("/first"), CIMultiDict(), None)
    cancelled = asyncio.ensure_future(
        pool.request("GET", server.url("/cancelled"), CIMultiDict(), None))
    third = asyncio.ensure_future(
        pool.request("GET", server.url("/third"), CIMultiDict(), None))
    await another_call(server, pools)
    assert not cancelled.done() and not third.done()
    assert await read_all(first) == b"ok"
    if when == "while waiting":
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        first.release()
    else:
        first.release()  # the slot goes to the first waiter, which is cancelled before
        cancelled.cancel()  # it runs
        with pytest.raises(asyncio.CancelledError):
            await cancelled
    resp = await asyncio.wait_for(third, 2)
    assert await read_all(resp) == b"ok"
    resp.release()
    assert await get(pool, server.url("/fourth")) == b"ok"  # the slot is free again
    assert server.paths() == ["/first", "/third", "/fourth", "/probe"]


# --- 10. back-pressure


async def test_an_unread_large_body_pauses_reading_and_then_arrives_whole(
        upstream: FakeUpstream, pools: MakePool) -> None:
    big = b"".join(i.to_bytes(4, "big") for i in range(1 << 20))  # 4 MiB, no two alike

    async def large(request: web.Request) -> web.StreamResponse:
        return web.Response(body=big, content_type="application/octet-stream")

    upstream.on("/large", large)
    resp = await pools().request("GET", f"{upstream.url}/large", CIMultiDict(), None)
    transport = resp._conn.transport
    assert transport is not None
    await wait_until(lambda: not transport.is_reading(), timeout=5,
                     what="reading paused")
    assert resp.content.total_bytes < len(big) // 2  # held back, not all taken in
    assert await read_all(resp) == big
    resp.release()


# --- 11. the idle timeout


async def test_an_idle_connection_is_closed_after_keepalive_seconds(
        raw: StartRaw, pools: MakePool) -> None:
    server = await raw(replying(ok()))
    pool = pools(keepalive_seconds=0.05)
    assert await get(pool, server.url("/one")) == b"ok"
    await server.until(lambda: server.conns[0].ended)
    assert await get(pool, server.url("/two")) == b"ok"
    assert [conn.paths for conn in server.conns] == [["/one"], ["/two"]]
    assert server.conns[1].port != server.conns[0].port


# --- 12. TLS


async def test_https_with_a_trusted_certificate_and_without(
        aiohttp_server: Any, pools: MakePool,
        tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    ports: list[int] = []

    async def hello(request: web.Request) -> web.StreamResponse:
        ports.append(peer_port(request))
        return web.json_response({"secure": request.secure})

    app = web.Application()
    app.router.add_get("/hello", hello)
    server = await aiohttp_server(app, ssl=server_ctx)
    url = f"https://127.0.0.1:{server.port}/hello"
    trusting = pools(ssl_context=client_ctx)
    for _ in range(2):
        assert json.loads(await get(trusting, url)) == {"secure": True}
    assert ports[0] == ports[1]
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await pools().request("GET", url, CIMultiDict(), None)
    assert len(ports) == 2


# --- 13-14. giving connections back, and closing


async def test_release_after_the_whole_body_gives_the_connection_back(
        raw: StartRaw, pools: MakePool) -> None:
    server = await raw(replying(ok()))
    pool = pools()
    assert await get(pool, server.url("/one")) == b"ok"
    assert await get(pool, server.url("/two")) == b"ok"
    assert [conn.paths for conn in server.conns] == [["/one", "/two"]]
    assert not server.conns[0].ended


@pytest.mark.parametrize("end", ["close", "release"])
async def test_ending_a_response_mid_body_closes_its_connection(
        raw: StartRaw, pools: MakePool, end: str) -> None:
    server = await raw(replying(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789"))
    pool = pools()
    resp = await pool.request("POST", server.url("/one"), CIMultiDict(), b"{}")
    assert await asyncio.wait_for(anext(aiter(resp.content)), 2) == b"0123456789"
    if end == "close":
        resp.close()
    else:
        resp.release()
    await server.until(lambda: server.conns[0].ended)
    resp = await pool.request("POST", server.url("/two"), CIMultiDict(), b"{}")
    resp.close()
    assert [conn.paths for conn in server.conns] == [["/one"], ["/two"]]


async def test_closing_the_pool_closes_idle_and_busy_connections(
        raw: StartRaw, pools: MakePool) -> None:
    async def answer(conn: RawConn, head: bytes) -> bool:
        if b" /busy " in head:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
        else:
            await conn.send(ok())
        return True

    server = await raw(answer)
    pool = pools()
    busy = await pool.request("GET", server.url("/busy"), CIMultiDict(), None)
    assert await get(pool, server.url("/idle")) == b"ok"
    assert [conn.paths for conn in server.conns] == [["/busy"], ["/idle"]]
    assert not any(conn.ended for conn in server.conns)
    await pool.close()
    await server.until(lambda: all(conn.ended for conn in server.conns))
    with pytest.raises(aiohttp.ClientPayloadError):  # the busy body's reader is told
        await asyncio.wait_for(read_all(busy), 2)
