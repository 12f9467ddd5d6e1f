"""The upstream leg of a forwarded call: a lean HTTP/1.1 client over asyncio protocols.

aiohttp's `ClientSession.request` builds a request object, a writer, a response object and a
stream reader for every call, resolves cookies, auto headers and traces, and was the largest
single cost of a forwarded call (about a third of the bare proxy's own Python per call). A
proxy needs little of that: the request is bytes already read whole, and the response body
only has to be handed on chunk by chunk. Here each pooled connection is one protocol whose
response parser is llhttp (through `httptools`: chunked bodies, lengths, keep-alive and
malformed input are the C parser's job, not ours), and a call costs one write and one
`Body` that yields what arrived.

What stays as it was with aiohttp, so that nothing a client or a test sees changes:
- The request line's target is yarl's encoding of the URL (what aiohttp sends), `Host` is
  added unless the headers carry one (a signed request's), `Accept: */*` when the client sent
  no Accept, and `Content-Length` (0 for a body-less POST-like method).
- Failures raise aiohttp's own exceptions (`ClientConnectorError` with the OS error,
  `ServerDisconnectedError`, `ClientPayloadError`, `ClientOSError`, `ClientResponseError`
  for an unparsable answer), so the endings table reads them unchanged.
- Connections: at most `limit` in use (0: no bound), idle ones kept `keepalive_seconds`.
  A call never retries by itself (a POST cannot be known to be unprocessed).

Not handled here (the caller uses its aiohttp session for them): HEAD (llhttp cannot be told a
response has no body), URLs with user info, schemes other than http and https, WebSocket
upgrades.
"""

from __future__ import annotations

import asyncio
import collections
import math
import socket
import ssl
from typing import Any

import aiohappyeyeballs
import aiohttp
import httptools
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = ["Body", "UpstreamPool", "UpstreamResponse", "handles"]

DNS_SECONDS = 300.0  # a host's addresses are kept this long (aiohttp's ttl_dns_cache here)
HAPPY_EYEBALLS_DELAY = 0.25  # aiohttp's: the next address is tried after this
KEEPALIVE_SECONDS = 15.0  # aiohttp's default: an idle connection is closed after this
HIGH_WATER = 256 * 1024  # bytes received and not yet taken: reading pauses above this
MAX_HEAD_BYTES = 64 * 1024  # status line and headers of a response, at most
_TARGETS_CACHED = 1024
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # aiohttp's GET_METHODS
_SCHEMES = {"http": 80, "https": 443}


def handles(method: str, url: str) -> bool:
    """Whether this client takes the call (else the caller's aiohttp session does)."""
    return method != "HEAD" and method != "CONNECT" and url.startswith(
        ("http://", "https://")) and ("@" not in url or not _user_info(url))


def _user_info(url: str) -> bool:
    """Whether the URL's authority holds user info (aiohttp sends it as Basic auth)."""
    authority = url.partition("//")[2]
    for end in "/?#":
        authority = authority.partition(end)[0]
    return "@" in authority


class Body:
    """A response body as it arrives: iterate it (each step yields everything received
    since the last one), `at_eof()` once all of it was taken. The reader pauses the
    connection while more than HIGH_WATER bytes wait (a slow client slows the upstream,
    as with aiohttp)."""

    __slots__ = ("_conn", "_chunks", "_waiting", "_eof", "_exc", "_waiter", "total_bytes")

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._waiting = 0  # bytes received and not taken yet
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.total_bytes = 0

    # --- the protocol's side

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        n = len(data)
        self.total_bytes += n
        self._waiting += n
        if self._waiting > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _end(self) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the reader's side

    def set_exception(self, exc: BaseException) -> None:
        """Fail the body: the next read raises `exc` (data already here is handed on
        first)."""
        if self._exc is None:
            self._exc = exc
        self._wake()

    def is_eof(self) -> bool:
        """The whole body was received (it may not all be taken yet)."""
        return self._eof

    def at_eof(self) -> bool:
        """The whole body was received and taken."""
        return self._eof and not self._chunks

    def iter_any(self) -> Body:
        return self

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        chunks = self._chunks
        while not chunks:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                raise StopAsyncIteration
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = chunks.popleft() if len(chunks) == 1 else b"".join(
            [chunks.popleft() for _ in range(len(chunks))])
        if self._waiting > HIGH_WATER:
            self._waiting -= len(data)
            if self._waiting <= HIGH_WATER:
                self._conn.resume()
        else:
            self._waiting -= len(data)
        return data


class UpstreamResponse:
    """What the forwarder reads of an upstream's answer (the parts of aiohttp's
    ClientResponse it uses)."""

    __slots__ = ("status", "reason", "headers", "content", "_conn")

    def __init__(self, conn: _Conn, status: int, reason: str,
                 headers: CIMultiDictProxy[str], body: Body) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = body

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if its answer was read whole
        and it may be kept, else it is closed."""
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            conn.pool._release(conn, reuse=self.content._eof)

    def close(self) -> None:
        """Done with it before its end: the connection is closed (the upstream stops)."""
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            conn.pool._release(conn, reuse=False)


class _Conn(asyncio.Protocol):
    """One upstream connection: its parser, and the response being read on it."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.reusable = False  # the last answer ended cleanly with keep-alive
        self._paused = False
        # the answer being read
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._body: Body | None = None
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._informational = False  # a 1xx answer, skipped
        self._sized = False  # the answer's length is known (Content-Length or chunked)
        self._request = ("", "")  # method and URL of the request on it
        self._timer: asyncio.TimerHandle | None = None  # the head's deadline

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._head is None and self._body is None:  # nothing asked: not ours to keep
            self._abort()
            return
        if self._head is not None:  # the head is not complete yet: bounded
            end = data.find(b"\r\n\r\n")  # (its blank line may also straddle two reads)
            if end >= 0 and self._head_bytes + end > MAX_HEAD_BYTES:
                self._fail(self._bad_answer("upstream response head too large"))
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(self._bad_answer("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            if self._body is None:
                self._fail(self._bad_answer(f"invalid upstream response: {exc}"))
            else:
                self._fail(aiohttp.ClientPayloadError(f"invalid response body: {exc}"))
        if self._head is not None:  # still no head after this read: all of it was head
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(self._bad_answer("upstream response head too large"))

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost decides what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        body = self._body
        if self._head is not None:
            self._answer_head(exc=aiohttp.ServerDisconnectedError() if exc is None else
                              aiohttp.ClientOSError(*_os_args(exc)))
        elif body is not None and not body._eof:
            if not self._sized and exc is None:
                body._end()  # a body delimited by the connection's close: complete
            else:
                body.set_exception(aiohttp.ClientPayloadError(
                    "Response payload is not completed" + (f": {exc!r}" if exc else "")))
        self._body = None
        self.pool._lost(self)

    def pause_writing(self) -> None:  # a request body larger than the socket's buffers
        pass

    def resume_writing(self) -> None:
        pass

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        if self._head is None:  # bytes after the answer, in its read: the parser is inside
            self.reusable = False  # them now, so the connection cannot carry another call
        self._reason = b""
        self._headers = []
        self._informational = False

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._body is None:  # trailers of a chunked body are not headers of the answer
            self._headers.append((name.decode("utf-8", "surrogateescape"),
                                  value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and the like: the real answer follows
            self._informational = True
            return
        if self._head is None:  # an answer nobody asked for: never reuse this connection
            self._abort()
            return
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        self._sized = "Content-Length" in headers or "chunked" in headers.get(
            "Transfer-Encoding", "").lower() or status in (204, 304)
        body = self._body = Body(self)
        self._answer_head(UpstreamResponse(
            self, status, self._reason.decode("utf-8", "surrogateescape"), headers, body))

    def on_body(self, data: bytes) -> None:
        body = self._body
        if body is not None:
            body._feed(data)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        body = self._body
        self._body = None
        self.reusable = self.parser.should_keep_alive()
        if body is not None:
            body._end()

    # --- the pool's and the body's side

    def send(self, method: str, url: str, head: bytes, body: bytes | None,
             deadline: float | None) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self._request = (method, url)
        self.reusable = False
        self._head_bytes = 0
        self._head = fut = self.loop.create_future()
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._answer_head, None,
                                            TimeoutError())
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return fut

    def _bad_answer(self, message: str) -> aiohttp.ClientResponseError:
        """What aiohttp raises for an answer it cannot parse."""
        method, url = self._request
        u = URL(url)
        info = aiohttp.RequestInfo(u, method, CIMultiDictProxy(CIMultiDict()), u)
        return aiohttp.ClientResponseError(info, (), status=502, message=message)

    def _answer_head(self, resp: UpstreamResponse | None = None,
                     exc: BaseException | None = None) -> None:
        fut, self._head = self._head, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if fut is None or fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(resp)  # type: ignore[arg-type]

    def _fail(self, exc: BaseException) -> None:
        body = self._body
        if self._head is not None:
            self._answer_head(exc=exc)
        elif body is not None:
            body.set_exception(exc)
        self._body = None
        self._abort()

    def _abort(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()


def _connection_key(key: tuple[str, str, int]) -> ConnectionKey:
    """What aiohttp's connector errors name (host, port, TLS)."""
    return ConnectionKey(key[1], key[2], key[0] == "https", True, None, None, None)


def _os_args(exc: BaseException) -> tuple[Any, ...]:
    if isinstance(exc, OSError) and exc.errno is not None:
        return (exc.errno, str(exc))
    return (0, str(exc) or type(exc).__name__)


class UpstreamPool:
    """Keep-alive connections per (scheme, host, port) and the calls' requests on them."""

    def __init__(self, *, limit: int = 0, connect_timeout: float | None = None,
                 keepalive_seconds: float = KEEPALIVE_SECONDS,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.keepalive_seconds = keepalive_seconds
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._busy: set[_Conn] = set()
        # slots held by calls that have no connection yet: connecting, or woken to take one
        self._pending = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._targets: dict[str, tuple[tuple[str, str, int], str, str]] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[Any]]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    # --- a call

    # the deadline is a timer on the head's future: no asyncio.timeout per call
    async def request(self, method: str, url: str, headers: CIMultiDict[str],
                      body: bytes | None,
                      timeout: float | None = None) -> UpstreamResponse:  # noqa: ASYNC109
        """Send the request; the answer's head (its body follows in `.content`), or
        TimeoutError if it has not come (nor a connection) within `timeout` seconds."""
        key, target, host = self._target(url)
        head = _head(method, target, host, headers, body)
        deadline = None if timeout is None else self.loop.time() + timeout
        conn = self._idle_conn(key)
        if conn is None:  # a slot and a connection, within the connect timeout (aiohttp's)
            bound = deadline
            if self.connect_timeout is not None:
                bound = min(bound or math.inf, self.loop.time() + self.connect_timeout)
            try:
                async with asyncio.timeout_at(bound):
                    conn = await self._acquire(key)
            except TimeoutError as exc:
                if bound == deadline:
                    raise  # the call's own deadline: the upstream did not answer in time
                raise aiohttp.ClientConnectorError(_connection_key(key), TimeoutError(
                    f"no connection to {key[1]}:{key[2]} within "
                    f"{self.connect_timeout:g}s")) from exc
        try:
            return await conn.send(method, url, head, body, deadline)
        except BaseException:
            self._release(conn, reuse=False)
            raise

    def _target(self, url: str) -> tuple[tuple[str, str, int], str, str]:
        """(connection key, request target, Host) of a URL, as aiohttp would send it."""
        found = self._targets.get(url)
        if found is None:
            u = URL(url)
            host = u.raw_host
            if not host or u.scheme not in _SCHEMES:
                raise aiohttp.InvalidURL(url)
            found = ((u.scheme, host, u.port or _SCHEMES[u.scheme]), u.raw_path_qs,
                     u.host_port_subcomponent or host)
            if len(self._targets) >= _TARGETS_CACHED:
                self._targets.clear()
            self._targets[url] = found
        return found

    # --- connections

    def _idle_conn(self, key: tuple[str, str, int]) -> _Conn | None:
        """A kept connection to this origin, if one is free and a slot too."""
        idle = self._idle.get(key)
        if not idle or (self.limit and len(self._busy) + self._pending >= self.limit):
            return None
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self._busy.add(conn)
                return conn
        return None

    async def _acquire(self, key: tuple[str, str, int]) -> _Conn:
        if self.limit and len(self._busy) + self._pending >= self.limit:
            waiter = self.loop.create_future()  # callers wait in turn
            self._waiters.append(waiter)
            try:
                await waiter  # woken with a slot held for it in _pending
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._pending -= 1
                    self._wake_one()  # handed a slot it will not use: pass it on
                raise
        else:
            self._pending += 1  # its slot, until it has a connection
        try:
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    break
            else:  # none kept (or all closed): a new one
                conn = await self._connect(key)
        except BaseException:
            self._pending -= 1
            self._wake_one()  # the slot is free again: the next waiter's
            raise
        self._pending -= 1
        self._busy.add(conn)
        return conn

    async def _connect(self, key: tuple[str, str, int]) -> _Conn:
        """A new connection: the host's addresses (cached DNS_SECONDS), tried by Happy
        Eyeballs (aiohappyeyeballs, as aiohttp does), then TLS for https."""
        scheme, host, port = key
        tls = scheme == "https"
        try:
            infos = await self._resolve(host, port)
            sock = await aiohappyeyeballs.start_connection(
                infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1, loop=self.loop)
            try:
                _, conn = await self.loop.create_connection(
                    lambda: _Conn(self, key), sock=sock,
                    ssl=self._ssl_context() if tls else None,
                    server_hostname=host.rstrip(".") if tls else None)
            except BaseException:
                sock.close()
                raise
        except ssl.SSLCertVerificationError as exc:
            raise aiohttp.ClientConnectorCertificateError(_connection_key(key), exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(_connection_key(key), exc) from exc
        except OSError as exc:
            raise aiohttp.ClientConnectorError(_connection_key(key), exc) from exc
        return conn

    async def _resolve(self, host: str, port: int) -> list[Any]:
        found = self._dns.get((host, port))
        now = self.loop.time()
        if found is not None and found[0] > now:
            return found[1]
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"no address for {host}")
        if len(self._dns) >= _TARGETS_CACHED:
            self._dns.clear()
        self._dns[(host, port)] = (now + DNS_SECONDS, infos)
        return infos

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _release(self, conn: _Conn, reuse: bool) -> None:
        self._busy.discard(conn)
        if reuse and conn.reusable and not conn.closed and not self._closed:
            conn.idle_since = self.loop.time()
            conn.resume()
            self._idle.setdefault(conn.key, []).append(conn)
            if self._sweep is None:
                self._sweep = self.loop.call_later(self.keepalive_seconds, self._expire)
        else:
            conn._abort()
        self._wake_one()

    def _lost(self, conn: _Conn) -> None:
        """A connection closed (by either side): its slot is free."""
        if conn in self._busy:
            self._busy.discard(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters and (not self.limit or len(self._busy) + self._pending < self.limit):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._pending += 1  # the slot is the waiter's until it runs
                waiter.set_result(None)
                return

    def _expire(self) -> None:
        """Close connections idle for keepalive_seconds (one timer for the pool)."""
        self._sweep = None
        cutoff = self.loop.time() - self.keepalive_seconds
        keep_any = False
        for key, conns in list(self._idle.items()):
            kept = []
            for conn in conns:
                if conn.closed:
                    continue
                if conn.idle_since <= cutoff:
                    conn._abort()
                else:
                    kept.append(conn)
            if kept:
                self._idle[key] = kept
                keep_any = True
            else:
                del self._idle[key]
        if keep_any:
            self._sweep = self.loop.call_later(self.keepalive_seconds / 2, self._expire)

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conns in self._idle.values():
            for conn in conns:
                conn._abort()
        self._idle.clear()
        for conn in list(self._busy):
            conn._abort()


def _head(method: str, target: str, host: str, headers: CIMultiDict[str],
          body: bytes | None) -> bytes:
    """The request's head as aiohttp writes it: Host first unless given (a signed request
    carries its own), the caller's headers in their order, Accept when absent, the length
    (the caller's own Content-Length is never sent: the body's is)."""
    lines = [f"{k}: {v}\r\n" for k, v in headers.items()]
    if "Content-Length" in headers:
        lines = [line for line in lines if not line[:15].lower() == "content-length:"]
    if "Host" not in headers:
        lines.insert(0, f"Host: {host}\r\n")
    if "Accept" not in headers:
        lines.append("Accept: */*\r\n")
    if body:
        lines.append(f"Content-Length: {len(body)}\r\n")
    elif method not in _NO_BODY_METHODS:
        lines.append("Content-Length: 0\r\n")
    text = f"{method} {target} HTTP/1.1\r\n{''.join(lines)}\r\n"
    # a CR or LF inside a name or value would split the head (header injection)
    if text.count("\n") != len(lines) + 2 or text.count("\r") != len(lines) + 2:
        raise ValueError("a request header contains a newline")
    return text.encode("utf-8", "surrogateescape")
