"""Keep-alive connections per origin, and a call's request on one of them."""

from __future__ import annotations

import asyncio
import collections
import math
import socket
import ssl
from typing import Any

import aiohappyeyeballs
import aiohttp
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict
from yarl import URL

from proxy.upstream.connection import Connection, UpstreamResponse

__all__ = ["UpstreamPool", "handles"]

DNS_SECONDS = 300.0  # a host's addresses are kept this long (aiohttp's ttl_dns_cache here)
HAPPY_EYEBALLS_DELAY = 0.25  # aiohttp's: the next address is tried after this
KEEPALIVE_SECONDS = 15.0  # aiohttp's default: an idle connection is closed after this
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


def _connection_key(key: tuple[str, str, int]) -> ConnectionKey:
    """What aiohttp's connector errors name (host, port, TLS)."""
    return ConnectionKey(key[1], key[2], key[0] == "https", True, None, None, None)


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
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._busy: set[Connection] = set()
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

    def _idle_conn(self, key: tuple[str, str, int]) -> Connection | None:
        """A kept connection to this origin, if one is free and a slot too."""
        if self.limit and len(self._busy) + self._pending >= self.limit:
            return None
        conn = self._pop_idle(key)
        if conn is not None:
            self._busy.add(conn)
        return conn

    def _pop_idle(self, key: tuple[str, str, int]) -> Connection | None:
        """The most recently kept open connection to this origin, taken from the pool."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _acquire(self, key: tuple[str, str, int]) -> Connection:
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
            conn = self._pop_idle(key) or await self._connect(key)
        except BaseException:
            self._pending -= 1
            self._wake_one()  # the slot is free again: the next waiter's
            raise
        self._pending -= 1
        self._busy.add(conn)
        return conn

    async def _connect(self, key: tuple[str, str, int]) -> Connection:
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
                    lambda: Connection(self, key), sock=sock,
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

    def _release(self, conn: Connection, reuse: bool) -> None:
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

    def _lost(self, conn: Connection) -> None:
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
