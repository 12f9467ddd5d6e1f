"""One upstream connection (an asyncio protocol whose answers llhttp parses, through
`httptools`), the answer it reads, and that answer's body as it arrives."""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

if TYPE_CHECKING:
    from proxy.upstream.pool import UpstreamPool

__all__ = ["Body", "Connection", "UpstreamResponse"]

HIGH_WATER = 256 * 1024  # bytes received and not yet taken: reading pauses above this
MAX_HEAD_BYTES = 64 * 1024  # status line and headers of a response, at most


class Body:
    """A response body as it arrives: iterate it (each step yields everything received
    since the last one), `at_eof()` once all of it was taken. The reader pauses the
    connection while more than HIGH_WATER bytes wait (a slow client slows the upstream,
    as with aiohttp)."""

    __slots__ = ("_conn", "_chunks", "_waiting", "_eof", "_exc", "_waiter", "total_bytes")

    def __init__(self, conn: Connection) -> None:
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
        was = self._waiting
        self._waiting = was - len(data)
        if was > HIGH_WATER >= self._waiting:  # below the mark again: read on
            self._conn.resume()
        return data


class UpstreamResponse:
    """What the forwarder reads of an upstream's answer (the parts of aiohttp's
    ClientResponse it uses)."""

    __slots__ = ("status", "reason", "headers", "content", "_conn")

    def __init__(self, conn: Connection, status: int, reason: str,
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


class Connection(asyncio.Protocol):
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


def _os_args(exc: BaseException) -> tuple[Any, ...]:
    if isinstance(exc, OSError) and exc.errno is not None:
        return (exc.errno, str(exc))
    return (0, str(exc) or type(exc).__name__)
