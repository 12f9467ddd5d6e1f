"""Shared fixtures: a scriptable fake provider on 127.0.0.1, the proxy in front of it, a
loaded estimator, a sink that collects every record, `tokenbooth serve` as a real process
(`served`), and a bounded wait on a condition (`wait_until`)."""

from __future__ import annotations

import asyncio
import ctypes
import gzip
import os
import socket
import ssl
import subprocess
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app import make_app
from proxy.config import Config, parse
from proxy.estimate import Estimator
from proxy.record import CallRecord, LiveCall


@dataclass
class Reply:
    """One scripted upstream answer."""

    chunks: list[bytes] = field(default_factory=lambda: [b'{"ok": true}'])
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay: float = 0.0  # between chunks
    first_delay: float = 0.0  # before the headers
    cut: bool = False  # drop the connection after the chunks
    gzip: bool = False


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    raw_path: str = ""


class FakeUpstream:
    """A real aiohttp server that replays scripted replies and remembers every request."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.replies: dict[str, Reply | Callable[[web.Request], Awaitable[web.StreamResponse]]] = {}
        self.default = Reply()
        self.disconnected = asyncio.Event()
        self.sent: list[float] = []  # loop time of each chunk sent
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def on(self, path: str, reply: Reply | Callable[[web.Request],
                                                      Awaitable[web.StreamResponse]]) -> None:
        self.replies[path] = reply

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Seen(request.method, request.path, request.query_string,
                                  dict(request.headers), body, request.raw_path))
        reply = self.replies.get(request.path, self.default)
        if not isinstance(reply, Reply):
            return await reply(request)
        if reply.first_delay:
            await asyncio.sleep(reply.first_delay)
        headers = dict(reply.headers)
        chunks = reply.chunks
        if reply.gzip:
            chunks = [gzip.compress(b"".join(chunks))]
            headers["Content-Encoding"] = "gzip"
        resp = web.StreamResponse(status=reply.status, headers=headers)
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        try:
            for i, chunk in enumerate(chunks):
                if i and reply.delay:
                    await asyncio.sleep(reply.delay)
                await resp.write(chunk)
                self.sent.append(loop.time())
            if reply.cut:
                assert request.transport is not None
                request.transport.abort()
                return resp
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return resp


class Collector:
    """A sink that keeps every record (and every start) for assertions."""

    name = "collector"

    def __init__(self) -> None:
        self.records: list[CallRecord] = []
        self.started_calls: list[LiveCall] = []
        self.event = asyncio.Event()

    def started(self, call: LiveCall) -> None:
        self.started_calls.append(call)

    def progress(self, call: LiveCall) -> None:
        return None

    async def handle(self, record: CallRecord) -> None:
        self.records.append(record)
        self.event.set()

    async def aclose(self) -> None:
        return None

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[CallRecord]:
        async def until() -> None:
            while len(self.records) < n:
                self.event.clear()
                await self.event.wait()

        await asyncio.wait_for(until(), timeout)
        return self.records


@pytest.fixture(scope="session")
def estimator() -> Estimator:
    est = Estimator()
    est.load()
    return est


@pytest.fixture
async def upstream(aiohttp_server: Any) -> FakeUpstream:
    fake = FakeUpstream()
    # it sees request bodies exactly as the proxy sent them (no inflating of gzip bodies)
    app = web.Application(client_max_size=64 << 20, handler_args={"auto_decompress": False})
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    fake.server = await aiohttp_server(app)
    return fake


def make_config(tmp_path: Path, upstream_url: str, **extra: Any) -> Config:
    raw: dict[str, Any] = {
        "ledger": {"path": str(tmp_path / "ledger.db"), "flush_seconds": 0.05},
        "upstreams": {name: {"url": upstream_url} for name in
                      ("openai", "anthropic", "gemini", "openrouter", "groq", "ollama",
                       "deepseek", "xai", "mistral", "bedrock", "vertex")},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse(raw, env={})


@dataclass
class Proxy:
    server: TestServer
    app: web.Application
    collector: Collector
    config: Config

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


StartProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy(aiohttp_server: Any, tmp_path: Path, upstream: FakeUpstream,
                      estimator: Estimator) -> StartProxy:
    async def start(**extra: Any) -> Proxy:
        config = make_config(tmp_path, upstream.url, **extra)
        collector = Collector()
        app = make_app(config, estimator=estimator, extra_sinks=(collector,))
        server = await aiohttp_server(app)
        return Proxy(server, app, collector, config)

    return start


@pytest.fixture
async def proxy(start_proxy: StartProxy) -> Proxy:
    return await start_proxy()


def sse(*events: str) -> list[bytes]:
    return [f"{e}\n\n".encode() for e in events]


class Sdks:
    """Real openai/anthropic SDK clients, closed at teardown (no leaked transports)."""

    def __init__(self) -> None:
        self._clients: list[Any] = []

    def openai(self, base: str, **kw: Any) -> Any:
        import openai

        c = openai.AsyncOpenAI(base_url=base, api_key=kw.pop("api_key", "sk-test-key"),
                               max_retries=0, **kw)
        self._clients.append(c)
        return c

    def anthropic(self, base: str, **kw: Any) -> Any:
        import anthropic

        c = anthropic.AsyncAnthropic(base_url=base, api_key=kw.pop("api_key", "sk-ant-test"),
                                     max_retries=0, **kw)
        self._clients.append(c)
        return c

    async def aclose(self) -> None:
        for c in self._clients:
            await c.close()


@pytest.fixture
async def sdk() -> Any:
    s = Sdks()
    yield s
    await s.aclose()


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def obey_file_modes() -> None:
    """In the child, before exec: root ignores file modes (CAP_DAC_OVERRIDE); drop that
    capability from the bounding set so a 0444 file is read-only to it, as to anyone."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture(scope="session")
def pg_server() -> Any:
    from tests.pg import PgServer

    server = PgServer()
    yield server
    server.close()


_pg_dbs = iter(range(1, 1 << 30))


@pytest.fixture
def pg_url(pg_server: Any) -> str:
    """A fresh, empty database on the test PostgreSQL server."""
    return str(pg_server.create_database(f"t{os.getpid()}_{next(_pg_dbs)}"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(cond: Callable[[], object], timeout: float = 10.0,
                     what: str = "condition") -> None:
    """Until `cond()` is true, polling every 50 ms; AssertionError after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def served(tmp_path: Path, config: str, ready_timeout: float = 30.0,
                 preexec_fn: Callable[[], None] | None = None
                 ) -> AsyncIterator[tuple[Process, int]]:
    """`tokenbooth serve` as a real process on a free port, ready (/readyz 200) when yielded;
    killed at the end if still running. Its output goes to `tmp_path/served.log`. Fails
    loudly, with that output, if the process exits or is not ready within `ready_timeout`
    seconds (several starting at once on a busy machine take a while). `preexec_fn` runs in
    the child before it starts."""
    port = free_port()
    cfg = tmp_path / "served.yaml"
    cfg.write_text(config)
    log_path = tmp_path / "served.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(cfg), "--port", str(port),
            stdout=log, stderr=asyncio.subprocess.STDOUT, preexec_fn=preexec_fn)
    try:
        await _until_ready(proc, port, ready_timeout, log_path)
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _until_ready(proc: Process, port: int, timeout: float, log_path: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    status: int | str = "no answer"
    async with aiohttp.ClientSession() as s:
        while loop.time() < deadline:
            if proc.returncode is not None:
                raise AssertionError(f"tokenbooth serve exited with {proc.returncode} before "
                                     f"it was ready:\n{log_path.read_text(errors='replace')}")
            try:
                async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                    status = r.status
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError as exc:
                status = type(exc).__name__
            await asyncio.sleep(0.1)
    raise AssertionError(f"tokenbooth serve not ready on port {port} within {timeout} s "
                         f"(last /readyz: {status}):\n{log_path.read_text(errors='replace')}")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1."""
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return key, cert


@pytest.fixture(scope="session")
def tls(tls_files: tuple[Path, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for that certificate (the google-genai SDK always connects
    with wss when it has an API key)."""
    key, cert = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    return server_ctx, ssl.create_default_context(cafile=str(cert))
