"""WebSocket pass-through for any route of any upstream, metered by the provider's socket
dialect when it has one (OpenAI Realtime; others plug in through `Provider.socket()`).

The upgrade goes upstream first (its path, query, auth headers and subprotocols as the
client sent them, keys swapped as for HTTP); the client is answered only once the upstream
accepted, with the subprotocol it chose, or gets the upstream's refusal status. Then every
message is relayed as it arrives, both ways, unchanged: text, binary, ping and pong
(auto-answering is off on both sides, so each ping reaches the other end), and the close
code and reason. Forward first, observe second: each message is sent on, then fed to the
dialect, whose failures are logged and counted, never the socket's.

Rows: one per finished response (`response.done`), one per input-audio transcription, one
per response still running when the socket closes (with how it ended), one per
`response.create` a budget refused (the client gets the provider's own `error` event; the
socket stays up). A socket that carried none of these is one row of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import WSMsgType, web

from proxy import headers as hdr
from proxy.dialects.base import Observation, RequestInfo, SocketDialect, SocketState
from proxy.outcome import End
from proxy.record import CallFacts, LiveCall, iso_utc
from proxy.refusals import unanswered
from proxy.routing import Route

if TYPE_CHECKING:
    from proxy.forward import Forwarder

__all__ = ["SocketRelay", "is_upgrade", "subprotocol_key"]

log = logging.getLogger("tokenbooth.sockets")
PROGRESS_SECONDS = 0.5
CLOSE_SECONDS = 2.0  # a close handshake the other side does not complete in time: dropped
CUT_CLOSE_SECONDS = 0.2  # at the drain's end: 1001 sent, little wait for the reply
_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol",
                        "sec-websocket-extensions", "sec-websocket-accept", "date", "server",
                        "content-length", "content-type"})
GOING_AWAY = 1001
POLICY_VIOLATION = 1008  # the socket's consumer key was revoked or expired while it was open
# Browsers cannot set headers on a WebSocket: OpenAI takes the key as a subprotocol.
_KEY_PROTOCOL = "openai-insecure-api-key."


def _protocols(headers: Any) -> list[str]:
    return [p.strip() for v in headers.getall("Sec-WebSocket-Protocol", [])
            for p in v.split(",") if p.strip()]


def subprotocol_key(headers: Any) -> str | None:
    """The API key a browser's socket carries as a subprotocol, if any."""
    for p in _protocols(headers):
        if p.startswith(_KEY_PROTOCOL):
            return p[len(_KEY_PROTOCOL):] or None
    return None


def is_upgrade(request: web.Request) -> bool:
    return request.method == "GET" and \
        request.headers.get("Upgrade", "").lower() == "websocket"


class SocketRelay:
    """One client socket: the upstream socket, the relay both ways, the dialect's state and
    the rows it makes. `record()` (always called, however the socket ends) submits them."""

    def __init__(self, forwarder: Forwarder, facts: CallFacts) -> None:
        self.fw = forwarder
        self.facts = facts
        self.dialect: SocketDialect | None = None
        self.state: SocketState | None = None
        self.route: Route | None = None
        self.submitted = 0  # rows recorded so far
        self.live: dict[str, LiveCall] = {}  # response id -> the call the live feed shows
        self.call_ids: dict[str, str] = {}  # response id -> its row's call id
        self.begun: dict[str, tuple[float, float]] = {}  # response id -> (wall, monotonic)
        self.last = time.monotonic()  # last message either way (the idle timeout)
        self.progress_at = 0.0
        self.meter_errors = 0
        self.closed: str | None = None  # who began the close handshake: client | upstream
        self.key_refused = False  # the consumer key went (revoked, expired): socket closed
        self.session: str | None = None  # the rows' session, pinned at the first row

    # -- the socket's life -------------------------------------------------------------

    async def run(self, request: web.Request, route: Route,
                  replace_auth: dict[str, str] | None) -> web.StreamResponse:
        facts, fw = self.facts, self.fw
        self.route = route
        self.dialect = route.provider.socket(facts.path.split("/", 2)[2])
        if self.dialect is not None:
            facts.operation = "realtime"
            try:
                self.state = self.dialect.new_socket(request.query, route.path_model)
            except Exception:
                log.exception("socket dialect %s failed to start", self.dialect.name)
        up = await self._connect(request, route, replace_auth)
        if isinstance(up, web.StreamResponse):
            return up
        facts.status_code = 101
        client = web.WebSocketResponse(
            protocols=(up.protocol,) if up.protocol else (), autoping=False, autoclose=False,
            max_msg_size=fw.config.server.max_body_bytes, timeout=CLOSE_SECONDS)
        client.headers.update(_answer_headers(up))
        client.headers["X-Meter-Call-Id"] = facts.call_id
        try:
            await client.prepare(request)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            facts.end = End.CLIENT_GONE
            await up.close(code=GOING_AWAY)
            return client
        facts.first_byte = time.monotonic()
        try:
            await self._relay(request, client, up)
        except asyncio.CancelledError:
            # cut at the drain's end (or the client's connection went): close both sides
            # with 1001, each with little wait; the rows say how it ended
            if self.closed is None:  # else: closed cleanly, the connection went after
                facts.end = End.SHUTDOWN if fw.lifecycle.cutting else End.CLIENT_GONE
                await _close_quickly(client, up)
            raise
        return client

    async def _connect(self, request: web.Request, route: Route,
                       replace_auth: dict[str, str] | None
                       ) -> aiohttp.ClientWebSocketResponse | web.StreamResponse:
        """The upstream socket, or our answer when it refused or never answered."""
        facts, fw = self.facts, self.fw
        headers = hdr.outbound(request.headers, replace_auth=replace_auth, strip=fw.strip)
        protocols = _protocols(request.headers)
        if replace_auth is not None:  # a client key in a subprotocol: ours goes as a header
            protocols = [p for p in protocols if not p.startswith(_KEY_PROTOCOL)]
        for name in _HANDSHAKE:
            headers.popall(name, None)
        url = route.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) \
            if route.url.startswith(("http://", "https://")) else route.url
        if request.query_string:
            url = f"{url}?{request.query_string}"
        try:
            async with asyncio.timeout(fw.config.server.idle_timeout_seconds):
                return await fw.session.ws_connect(
                    url, protocols=protocols, headers=headers, autoclose=False,
                    autoping=False, max_msg_size=0, compress=0,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_SECONDS))
        except aiohttp.WSServerHandshakeError as exc:
            facts.status_code = exc.status
            status = exc.status if exc.status >= 400 else 502
            return fw.socket_refusal(facts, route, status, "upstream_error",
                                     f"upstream {route.upstream.name} refused the WebSocket "
                                     f"(status {exc.status})")
        except aiohttp.ClientConnectorError as exc:
            end = End.CONNECT_TIMEOUT if isinstance(exc.os_error, TimeoutError) \
                else End.UNREACHABLE
            return unanswered(facts, route, end, 504 if end is End.CONNECT_TIMEOUT else 502,
                              "upstream_unreachable", "is unreachable")
        except (TimeoutError, aiohttp.ServerTimeoutError):
            return unanswered(facts, route, End.NO_ANSWER, 504, "upstream_timeout",
                              "did not answer in time")
        except aiohttp.ClientError as exc:
            return unanswered(facts, route, End.CONNECT_FAILED, 502, "upstream_unreachable",
                              f"failed: {type(exc).__name__}", type(exc).__name__)

    async def _relay(self, request: web.Request, client: web.WebSocketResponse,
                     up: aiohttp.ClientWebSocketResponse) -> None:
        """Both directions at once until either side closes; the idle timeout watches both."""
        from proxy.tasks import spawn

        to_up = spawn(self._pump(client, up, upstream=True), name="socket-to-upstream")
        to_client = spawn(self._pump(up, client, upstream=False), name="socket-to-client")
        pumps = {to_up, to_client}
        waiting = set(pumps)
        idle = self.fw.config.server.idle_timeout_seconds
        how: str | None = None
        try:
            while waiting and how is None:
                wait = max(self.last + idle - time.monotonic(), 0.0)
                done, waiting = await asyncio.wait(waiting, timeout=wait,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    result = task.result() if task.exception() is None else "upstream_cut"
                    if result != "closing":  # "closing": the other pump is closing it
                        how = result
                if not done and time.monotonic() - self.last >= idle:
                    self.facts.end = End.IDLE
                    break
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        if how == "upstream_cut":
            self.facts.end = End.UPSTREAM_CUT
            _break(request)
            await _bounded(up.close())
        elif how == "client_gone":
            self.facts.end = End.CLIENT_GONE
            await _bounded(up.close(code=GOING_AWAY))
        elif self.facts.end is End.IDLE:
            await _close_quickly(client, up)

    async def _pump(self, src: Any, dst: Any, *, upstream: bool) -> str:
        """Relay messages from `src` to `dst` until a close or a cut; say which."""
        observe = self._on_client if upstream else self._on_server
        while True:
            try:
                msg = await src.receive()
            except (ConnectionResetError, aiohttp.ClientError):
                return "client_gone" if upstream else "upstream_cut"
            self.last = time.monotonic()
            kind = msg.type
            try:
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    if upstream and await self._refused(src, msg.data):
                        if self.key_refused:  # the client's side is closed (1008): so is ours
                            self.closed = "client"
                            await _bounded(dst.close(code=GOING_AWAY))
                            return "client_closed"
                        continue
                    if kind is WSMsgType.TEXT:
                        await dst.send_str(msg.data)
                    else:
                        await dst.send_bytes(msg.data)
                    observe(msg.data)
                elif kind is WSMsgType.PING:
                    await dst.ping(msg.data)
                elif kind is WSMsgType.PONG:
                    await dst.pong(msg.data)
                elif kind is WSMsgType.CLOSE:
                    # the close code and reason, on; the other side's reply completes the
                    # handshake on this side
                    self.closed = "client" if upstream else "upstream"
                    await dst.close(code=msg.data, message=(msg.extra or "").encode())
                    reply = dst.close_code if dst.close_code is not None else msg.data
                    await _bounded(src.close(code=reply))
                    return "client_closed" if upstream else "upstream_closed"
                elif kind is WSMsgType.CLOSING:  # the other pump is closing this side
                    return "closing"
                else:  # CLOSED, ERROR: the connection went without a close frame
                    return "client_gone" if upstream else "upstream_cut"
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                return "upstream_cut" if upstream else "client_gone"

    # -- metering (never the socket's failure) ----------------------------------------------

    def _on_client(self, frame: str | bytes) -> None:
        state = self.state
        if state is None:
            return
        try:
            self._results(state.on_client(frame))
        except Exception:
            self._meter_failed()

    def _on_server(self, frame: str | bytes) -> None:
        state = self.state
        if state is None:
            return
        try:
            results = state.on_server(frame)
            # a response shows on the live feed as soon as it runs, then its running
            # counts at most every PROGRESS_SECONDS
            now = time.monotonic()
            update = now >= self.progress_at
            if update:
                self.progress_at = now + PROGRESS_SECONDS
            self._progress(state, update)
            self._results(results)
        except Exception:
            self._meter_failed()

    def _meter_failed(self) -> None:
        self.meter_errors += 1
        log.exception("socket dialect failed on call %s", self.facts.call_id)

    def _results(self, results: list[Observation]) -> None:
        for obs in results:
            self._submit(self._row(obs))

    def _submit(self, row: CallFacts) -> None:
        """A row, recorded as soon as its response ended (budgets and the page see it)."""
        if self.meter_errors:  # messages the dialect failed on, counted on the next row
            row.observation = replace(row.observation, parse_errors=row.observation
                                      .parse_errors + self.meter_errors)
            self.meter_errors = 0
        if self.submitted:  # the socket's own facts are counted once: on its first row
            row.tags_cleaned = row.attribution_unreadable = 0
        self.submitted += 1
        self.fw.recorder.submit(row)

    def _call_id(self, rid: str | None) -> str:
        if rid is None:
            return os.urandom(12).hex()
        return self.call_ids.setdefault(rid, os.urandom(12).hex())

    def _row(self, obs: Observation, end: End | None = None) -> CallFacts:
        """The row of one result: the socket's facts, with its own id, clocks and usage."""
        facts, rid = self.facts, obs.upstream_request_id
        started, t0 = self.begun.pop(rid, (None, None)) if rid else (None, None)
        if started is None or t0 is None:
            t0 = time.monotonic()
            started = facts.started + (t0 - facts.t0)
        self.live.pop(rid or "", None)
        return replace(facts, call_id=self._call_id(rid), started=started, t0=t0,
                       ended=time.monotonic(), operation=obs.operation or facts.operation,
                       stream=True, first_byte=None, observation=obs, end=end,
                       end_detail=None, tags=self._tags(),
                       request_info=RequestInfo(model=obs.response_model),
                       credential=facts.credential,
                       # a span per response, each a child of the socket's traceparent
                       trace=facts.trace.sibling() if facts.trace is not None else None)

    def _tags(self) -> dict[str, str]:
        """The socket's tags; its session: X-Meter-Session, else the provider's, else the
        socket's own (`ws-<its call id>`). Pinned at its first row, so every row of one
        socket has the same session even when the provider names it only later (Gemini
        Live's resumption handle comes after the first turn)."""
        tags = self.facts.tags
        if "session" in tags:
            return tags
        if self.session is None:
            session = getattr(self.state, "session_id", None)
            self.session = session if isinstance(session, str) and session \
                else f"ws-{self.facts.call_id}"
        return {**tags, "session": self.session}

    def _progress(self, state: SocketState, update: bool) -> None:
        """Each running response on the live feed, with its running output."""
        running = getattr(state, "progress", None)
        if running is None:
            return
        now_wall, now = time.time(), time.monotonic()
        facts, route = self.facts, self.route
        for rid, obs in running().items():
            live = self.live.get(rid)
            if live is None:
                self.begun.setdefault(rid, (now_wall, now))
                tags = self._tags()
                live = self.live[rid] = LiveCall(
                    self._call_id(rid), iso_utc(now_wall), facts.upstream, "realtime", True,
                    tags.get("agent"), tags.get("session"), tags.get("run"),
                    obs.response_model, tags=tags,
                    price_provider=route.price_provider if route else None,
                    free=facts.free)
                self.fw.recorder.started(live)
            elif update and self.fw.recorder.watching():
                self.fw.progress(live, obs)

    async def _refused(self, client: web.WebSocketResponse, frame: str | bytes) -> bool:
        """A `response.create` a blocking budget or a rate limit refuses: answered here with
        the provider's `error` event (recorded as a refused call), not forwarded; the socket
        stays up. Made with a consumer key revoked or expired since the socket opened: the
        same `error` event (`invalid_api_key`), a refused row, and the socket closed (1008)."""
        admission, dialect, route = self.fw.admission, self.dialect, self.route
        key = self.facts.key
        admit = admission is not None and admission.needed(self.facts)
        if (not admit and key is None) or dialect is None or route is None:
            return False
        try:
            if dialect.refusal(frame, "") is None:
                return False
        except Exception:
            self._meter_failed()
            return False
        model = getattr(self.state, "model", None) or route.path_model
        check = replace(self.facts, call_id=os.urandom(12).hex(), started=time.time(),
                        t0=time.monotonic(), tags=self._tags(),
                        request_info=RequestInfo(model=model), observation=Observation(),
                        trace=self.facts.trace.sibling() if self.facts.trace else None)
        why = None if key is None else self._key_gone(key.id)
        if why is not None:
            assert key is not None
            message = f"this consumer key is {why} ({key.id})"
            event = dialect.refusal(frame, message, "invalid_api_key")
            if event is not None:
                await client.send_str(event)
            check.end, check.end_detail, check.ended = End.KEY_REFUSED, why, time.monotonic()
            check.key = check.client = None  # not attributed to the key (as over HTTP)
            self._submit(check)
            self.key_refused = True
            await _bounded(client.close(code=POLICY_VIOLATION, message=message.encode()))
            return True
        if not admit:
            return False
        assert admission is not None
        denied = await admission.admit(check, route)
        if denied is None:
            return False
        rate = denied.check == "rate"
        event = dialect.refusal(frame, denied.message,
                                "rate_limit_exceeded" if rate else "budget_exceeded")
        if event is not None:
            await client.send_str(event)
        check.end, check.end_detail, check.ended = (End.RATE_LIMIT if rate else End.BUDGET,
                                                    denied.name, time.monotonic())
        self._submit(check)
        return True

    def _key_gone(self, key_id: str) -> str | None:
        """Why the socket's consumer key no longer admits calls (None: it still does)."""
        registry = self.fw.keys
        if registry is None:
            return None
        stored = registry.by_id.get(key_id)
        return "unknown" if stored is None else stored.refusal(time.time())

    def record(self) -> None:
        """Every row of the socket, once: its results, what was still running (ended as the
        socket ended), or, with none, the socket itself."""
        facts = self.facts
        facts.ended = time.monotonic()
        # a response still running ends as the socket did: cut, timed out, or closed by
        # one side (by the upstream: cut short; by the client: it went away)
        cut = facts.end or (End.UPSTREAM_CUT if self.closed == "upstream" else End.CLIENT_GONE)
        rows: list[CallFacts] = []
        if self.state is not None:
            try:
                rows.extend(self._row(obs, end=cut) for obs in self.state.close())
            except Exception:
                self._meter_failed()
        for live in list(self.live.values()):  # seen running, never finished nor returned
            rid = next((r for r, c in self.call_ids.items() if c == live.call_id), None)
            rows.append(self._row(Observation(response_model=live.model,
                                              upstream_request_id=rid, status="incomplete",
                                              operation="realtime"), end=cut))
        if not rows and not self.submitted:  # a socket without responses: a row of its own
            model = getattr(self.state, "model", None)
            if isinstance(model, str) and facts.request_info is None:
                facts.request_info = RequestInfo(model=model)
            rows.append(facts)
        for row in rows:
            self._submit(row)


def _answer_headers(up: aiohttp.ClientWebSocketResponse) -> dict[str, str]:
    """The upstream handshake's own headers (request ids, rate limits) for the client."""
    resp = up._response  # the handshake response: its headers are the upstream's answer
    out: dict[str, str] = {}
    for k, v in hdr.inbound(resp.headers).items():
        if k.lower() not in _HANDSHAKE:
            out[k] = v
    return out


async def _bounded(aw: Any, seconds: float = CLOSE_SECONDS) -> None:
    try:
        async with asyncio.timeout(seconds):
            await aw
    except (TimeoutError, aiohttp.ClientError, ConnectionResetError, RuntimeError):
        pass


async def _close_quickly(client: web.WebSocketResponse,
                         up: aiohttp.ClientWebSocketResponse) -> None:
    await _bounded(client.close(code=GOING_AWAY, message=b"going away"), CUT_CLOSE_SECONDS)
    await _bounded(up.close(code=GOING_AWAY, message=b"going away"), CUT_CLOSE_SECONDS)


def _break(request: web.Request) -> None:
    """The upstream's socket was cut: cut the client's too (it sees what it would have)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
