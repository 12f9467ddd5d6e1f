"""The listening side's guards against slow and numerous clients (aiohttp has neither):
a deadline for a connection's first request head (408, then close), a bound on open
client connections, and a smaller one per client address, so that one client cannot take
them all (further ones are closed at once). Each refusal is counted by its reason."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = ["GuardedRunner", "default_max_client_connections"]

_408 = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def default_max_client_connections() -> int:
    """Half the process's open-file limit: each call holds a client and an upstream socket,
    and the ledger and vocabularies need a few more."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 65_536
    return max(64, (soft - 64) // 2)


class _Handler(RequestHandler):
    """A RequestHandler whose connection must deliver its first request head in time."""

    def __init__(self, manager: Any, *, header_timeout: float,
                 on_refused: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._on_refused = on_refused
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._force_close:
            self._head_timer = self._loop.call_later(self._header_timeout, self._head_late)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and self._request_count:
            self._head_timer.cancel()  # a whole head arrived; later ones: keep-alive timer
            self._head_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _head_late(self) -> None:
        self._head_timer = None
        if self._request_count or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(_408)
        self._on_refused("header_timeout")
        self.force_close()


class _Server(web.Server):
    def __init__(self, *args: Any, header_timeout: float, max_client_connections: int,
                 max_connections_per_client: int, on_refused: Callable[[str], None],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = {"header_timeout": header_timeout, "on_refused": on_refused}
        self._max_clients = max_client_connections
        self._max_per_client = max_connections_per_client
        self._on_refused = on_refused
        self._per_address: dict[str, int] = {}  # open connections by client address
        self._address: dict[RequestHandler, str] = {}

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._guard, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._address[handler] = address
        held = self._per_address[address] = self._per_address.get(address, 0) + 1
        if len(self.connections) > self._max_clients:
            self._on_refused("max_client_connections")
            handler.force_close()
        elif held > self._max_per_client:
            self._on_refused("max_connections_per_client")
            handler.force_close()

    def connection_lost(self, handler: RequestHandler,
                        exc: BaseException | None = None) -> None:
        address = self._address.pop(handler, None)
        if address is not None:
            left = self._per_address[address] - 1
            if left:
                self._per_address[address] = left
            else:
                del self._per_address[address]
        super().connection_lost(handler, exc)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server applies the guards."""

    def __init__(self, app: web.Application, *, header_timeout: float,
                 max_client_connections: int, max_connections_per_client: int | None,
                 on_refused: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._guard = {"header_timeout": header_timeout,
                       "max_client_connections": max_client_connections,
                       # by default one address may hold half: the rest stays for the others
                       "max_connections_per_client": max_connections_per_client
                       or max(1, max_client_connections // 2),
                       "on_refused": on_refused}

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _Server(plain.request_handler, request_factory=plain.request_factory,
                       handler_cancellation=plain.handler_cancellation, loop=plain._loop,
                       **self._guard, **plain._kwargs)
