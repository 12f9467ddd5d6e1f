"""The catch-all handler: request -> upstream -> StreamResponse, with a Meter on the side.

Forward first, observe second: each upstream chunk is written to the client as it arrives
(`iter_any`, never re-framed), then fed to the meter. Whatever way the call ends (normal,
upstream error, client abort, upstream cut, timeout, unreachable, rejected), exactly one
CallFacts goes to the recorder, from the `finally` block. The facts say what happened (an
`End`, the upstream's status); `proxy.outcome` alone turns that into the row's outcome.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import time
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy import attribution
from proxy import headers as hdr
from proxy.admission import Admission
from proxy.admission.rate_headers import RateView, headers_for
from proxy.auth import authenticate, key_allows_model
from proxy.bodies import parse_json as _parse
from proxy.bodies import parse_json_encoded as _parse_encoded
from proxy.callids import new_call_id
from proxy.config import Config, Upstream
from proxy.dialects import DIALECTS, PROVIDERS, Observation, provider_by_headers
from proxy.dialects.base import Dialect
from proxy.idle import IdleWatch
from proxy.keyring import KeyRegistry
from proxy.lifecycle import Lifecycle
from proxy.live import live_call, update_live
from proxy.meter import Meter
from proxy.outcome import End
from proxy.quota import Quota
from proxy.record import CallFacts, LiveCall
from proxy.recorder import Recorder
from proxy.refusals import Refused, budget_refusal, error_response, rate_refusal, refuse, unanswered
from proxy.routing import PathEscape, Route, normalize_rest, resolve
from proxy.sockets import SocketRelay, is_upgrade
from proxy.tracecontext import SpanIds, start_span_ids
from proxy.upstream import UpstreamPool, UpstreamResponse, handles

__all__ = ["Forwarder"]

log = logging.getLogger("tokenbooth.forward")
PROGRESS_SECONDS = 0.5
_THREAD_PARSE_BYTES = 256 * 1024
Answer = aiohttp.ClientResponse | UpstreamResponse  # an upstream's answer, either client's
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-generation-id", "apim-request-id",
                       "x-amzn-requestid")


def _attribute(facts: CallFacts, provider_tags: dict[str, str]) -> None:
    """Tags the client's own SDK sends (Claude Code's session and sub-agent), under the
    caller's X-Meter-* tags and other tools' attribution: those always win."""
    info = facts.request_info
    if info is not None and info.session:
        provider_tags.setdefault("session", info.session)
    for key, value in provider_tags.items():
        facts.tags.setdefault(key, value)


class _WithFirstChunk(web.StreamResponse):
    """A response whose head is sent together with the first body bytes (as aiohttp's own
    web.Response does), for a body already received when the head is prepared."""

    _send_headers_immediately = False


class Forwarder:
    """Holds what every call needs; built once in make_app()."""

    def __init__(self, config: Config, session: aiohttp.ClientSession, recorder: Recorder,
                 lifecycle: Lifecycle, admission: Admission | None = None,
                 keys: KeyRegistry | None = None, pool: UpstreamPool | None = None) -> None:
        self.config = config
        self.pool = pool  # the upstream leg of plain calls (else the session's)
        self.keys = keys  # consumer keys issued at run time
        self.session = session
        self.recorder = recorder
        self.lifecycle = lifecycle
        self.admission = admission
        self.no_inject: set[str] = set()  # upstreams that answered 400 to injected requests
        self._client_keys = {v: k for k, v in config.client_keys.items()}
        self._known = ", ".join(sorted(config.upstreams))
        self.strip = attribution.stripped(config.attribution)  # header prefixes never sent
        # OTel spans on: each call's span ids are chosen as it starts (else traceparent
        # passes through untouched and nothing of trace context runs)
        self._spans = config.otel is not None and config.otel.spans

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One call: its facts, its steps, and exactly one record however it ends."""
        if is_upgrade(request):
            return await self._socket(request)
        facts = self._facts(request)
        lifecycle = self.lifecycle
        lifecycle.enter()
        try:
            return await self._call(request, facts)
        except Refused as ended:  # refused: the facts say why
            return ended.response
        except asyncio.CancelledError:
            facts.end = End.SHUTDOWN if lifecycle.cutting else End.CLIENT_GONE
            raise
        finally:
            facts.ended = time.monotonic()
            self.recorder.submit(facts)
            lifecycle.leave()

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        """A WebSocket: the first steps of a call (upstream, route, client key, budgets),
        then proxy.sockets relays it; its rows are recorded however it ends."""
        facts = self._facts(request)
        relay = SocketRelay(self, facts)
        lifecycle = self.lifecycle
        lifecycle.enter()
        try:
            up = self._upstream(request, facts)
            route = self._route(request, up, facts)
            replace_auth = authenticate(request, route, facts, self.keys, self._client_keys)
            # a Realtime socket names its model in the query
            key_allows_model(facts, route, request.query.get("model"))
            if (admission := self.admission) is not None and admission.needed(facts):
                await self._admit(admission, facts, route)
            return await relay.run(request, route, replace_auth)
        except Refused as ended:
            return ended.response
        except asyncio.CancelledError:
            if facts.end is None and relay.closed is None:
                facts.end = End.SHUTDOWN if lifecycle.cutting else End.CLIENT_GONE
            raise
        finally:
            relay.record()
            lifecycle.leave()

    def socket_refusal(self, facts: CallFacts, route: Route, status: int, kind: str,
                       message: str) -> web.Response:
        """The upstream refused a socket's upgrade: its status, in its provider's shape."""
        return error_response(status, kind, message, call_id=facts.call_id,
                              provider=route.provider)

    def progress(self, live: LiveCall, obs: Observation | None) -> None:
        self._progress(live, obs)

    async def _call(self, request: web.Request, facts: CallFacts) -> web.StreamResponse:
        """The steps of a call, in order; a step that refuses raises Refused."""
        up = self._upstream(request, facts)
        route = self._route(request, up, facts)
        replace_auth = authenticate(request, route, facts, self.keys, self._client_keys)
        body = await self._read_body(request, route, facts)
        dialect = await self._read_request(request, route, body, facts)
        info = facts.request_info
        key_allows_model(facts, route, info.model if info is not None else None)
        live = live_call(facts, route, dialect, len(body))
        view = None
        if (admission := self.admission) is not None and admission.needed(facts):
            view = await self._admit(admission, facts, route)
        if route.batch_id is None:  # a batch download is recorded as its result lines
            self.recorder.started(live)
        return await self._forward(request, route, body, facts, live, replace_auth, view)

    def _facts(self, request: web.Request) -> CallFacts:
        """The call's facts as it arrives: its id, its clocks, its upstream, and the tags
        and end user its headers name (proxy.attribution)."""
        name = request.match_info["upstream"]
        up = self.config.upstreams.get(name)
        facts = CallFacts(new_call_id(), time.time(), time.monotonic(), name,
                          up.dialect if up else None, "other", request.method,
                          f"/{name}/{request.match_info['rest']}")
        attribution.read_headers(facts, request.headers, self.config.attribution)
        if self._spans:
            h = request.headers
            parents = h.getall("traceparent", ())  # more than one: invalid (a new trace)
            facts.trace = start_span_ids(parents[0] if len(parents) == 1 else None,
                                         h.getall("tracestate", ()))
        return facts

    def _upstream(self, request: web.Request, facts: CallFacts) -> Upstream:
        """The configured upstream the path names (refused in the caller's SDK's shape)."""
        up = self.config.upstreams.get(facts.upstream)
        if up is None:
            raise Refused(refuse(
                facts, End.UNKNOWN_UPSTREAM, "unknown_upstream",
                f"unknown upstream {facts.upstream!r}; known: {self._known}",
                provider_by_headers(request.headers)))
        facts.free = up.free
        return up

    def _route(self, request: web.Request, up: Upstream, facts: CallFacts) -> Route:
        """Where the call goes and what it is (operation, parser, model, batch)."""
        name, rest = up.name, request.match_info["rest"]
        try:
            rest, raw_rest = normalize_rest(rest, _raw_rest(request, name))
        except PathEscape:
            facts.path = f"/{name}{posixpath.normpath('/' + rest)}"  # never a raw `..`
            raise Refused(refuse(
                facts, End.PATH_ESCAPE, "bad_request",
                "the path's '..' segments leave the upstream's base path",
                PROVIDERS[up.dialect])) from None
        facts.path = f"/{name}/{rest}"
        route = resolve(up, request.method, rest, raw_rest)
        facts.operation, facts.parser = route.operation, route.parser
        facts.path_model, facts.stream = route.path_model, route.path_stream
        facts.batch_id, facts.price_provider = route.batch_id, route.price_provider
        return route

    async def _read_body(self, request: web.Request, route: Route, facts: CallFacts) -> bytes:
        """The whole request body, up to server.max_body_bytes."""
        cap = self.config.server.max_body_bytes
        try:
            if (request.content_length or 0) > cap:
                raise web.HTTPRequestEntityTooLarge(cap, request.content_length or 0)
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            resp = refuse(facts, End.BODY_TOO_LARGE, "request_too_large",
                          f"request body exceeds server.max_body_bytes ({cap} bytes)",
                          route.provider)
            resp.force_close()  # the rest of the body is never read
            raise Refused(resp) from None
        facts.request_body = body
        return body

    async def _read_request(self, request: web.Request, route: Route, body: bytes,
                            facts: CallFacts) -> Dialect | None:
        """The request's JSON, parsed once for every consumer (a large or encoded body off
        the event loop), what it says, and the tags the client's own SDK sends."""
        dialect = DIALECTS.get(route.parser) if route.parser else None
        if dialect is not None and dialect.reads_body:  # not JSON: a multipart upload
            ct = request.headers.get("Content-Type")
            facts.request_doc = dialect.read_body(body, ct) if len(body) <= _THREAD_PARSE_BYTES \
                else await asyncio.to_thread(dialect.read_body, body, ct)
            facts.request_info = dialect.request_info(facts.request_doc)
        elif dialect is not None:
            encoding = request.headers.get("Content-Encoding")
            if encoding is None and len(body) <= _THREAD_PARSE_BYTES:
                facts.request_doc = _parse(body)
            else:
                facts.request_doc = await asyncio.to_thread(
                    _parse_encoded, body, encoding, self.config.server.max_body_bytes)
            facts.request_info = dialect.request_info(facts.request_doc)
        attribution.read_body(facts, self.config.attribution)
        _attribute(facts, route.provider.tags(request.headers))
        return dialect

    async def _admit(self, admission: Admission, facts: CallFacts,
                     route: Route) -> RateView | None:
        """Admission's word: a budget's refusal is a 429 the SDKs do not retry (or a 503 they
        may retry, when a budget cannot be checked while the shared ledger is away); a rate
        limit's is a 429 they retry after `Retry-After`. Admitted: the rate limits' figures
        for the response's headers (None when none applied)."""
        denied, view = await admission.decide(facts, route)
        if denied is None:
            return view if isinstance(view, RateView) else None
        if denied.check == "rate":
            raise Refused(rate_refusal(facts, route, denied))
        raise Refused(budget_refusal(facts, route, denied))

    async def _open(self, request: web.Request, route: Route, url: str, body: bytes,
                    injected: bool, replace_auth: dict[str, str] | None,
                    trace: SpanIds | None = None) -> Answer:
        headers: Any = hdr.outbound(request.headers, identity=injected,
                                    replace_auth=replace_auth, strip=self.strip)
        if trace is not None:  # the proxy's span is the upstream's parent
            headers["traceparent"] = trace.traceparent()
            # the client's tracestate goes on only with its valid traceparent (one line)
            headers.popall("tracestate", None)
            if trace.tracestate:
                headers["tracestate"] = trace.tracestate
        if route.upstream.aws is not None:  # signed for the URL exactly as it will be sent
            headers = route.provider.sign(route.upstream, request.method, str(URL(url)),
                                          headers, body)
        # Until the response head arrives the idle timeout is one deadline; after it, the
        # body's IdleWatch takes over (neither client has a read timeout of its own).
        timeout = self.config.server.idle_timeout_seconds
        if self.pool is not None and handles(request.method, url):
            if not isinstance(headers, CIMultiDict):  # signed: a plain dict
                headers = CIMultiDict(headers)
            return await self.pool.request(request.method, url, headers, body or None,
                                           timeout)
        async with asyncio.timeout(timeout):
            return await self.session.request(
                request.method, url, data=body if body else None, allow_redirects=False,
                headers=headers,
            )

    async def _forward(self, request: web.Request, route: Route, body: bytes, facts: CallFacts,
                       live: LiveCall, replace_auth: dict[str, str] | None,
                       view: RateView | None = None) -> web.StreamResponse:
        up = route.upstream
        injected_body = None
        injector = route.provider.injector(route.parser) \
            if up.inject_stream_usage and up.name not in self.no_inject \
            and "Content-Encoding" not in request.headers else None  # bytes we can splice
        if injector is not None:
            injected_body = injector.inject(body, facts.request_doc)
        url = route.url
        if request.query_string:
            url = f"{url}?{request.query_string}"
        try:
            resp = await self._open(request, route, url, injected_body or body,
                                    injected_body is not None,
                                    replace_auth, facts.trace)
            if injected_body is not None and resp.status == 400:
                # Older Azure api-versions reject stream_options: resend once, remember.
                resp.close()
                self.no_inject.add(up.name)
                log.warning("upstream %s rejected stream_options; injection off for it", up.name)
                injected_body = None
                resp = await self._open(request, route, url, body, False, replace_auth,
                                        facts.trace)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, TimeoutError):
                return unanswered(facts, route, End.CONNECT_TIMEOUT, 504,
                                  "upstream_timeout", "did not accept a connection in time")
            return unanswered(facts, route, End.UNREACHABLE, 502, "upstream_unreachable",
                              "is unreachable")
        except (TimeoutError, aiohttp.ServerTimeoutError):
            return unanswered(facts, route, End.NO_ANSWER, 504, "upstream_timeout",
                              "did not answer in time")
        except aiohttp.ClientError as exc:
            kind = type(exc).__name__
            return unanswered(facts, route, End.CONNECT_FAILED, 502,
                              "upstream_unreachable", f"failed: {kind}", kind)
        try:
            return await self._relay(request, route, resp, facts, live,
                                     injector if injected_body is not None else None, view)
        except BaseException:  # never relayed whole: its connection goes, not back to the pool
            resp.close()
            raise

    async def _relay(self, request: web.Request, route: Route, resp: Answer,
                     facts: CallFacts, live: LiveCall, injector: Any,
                     view: RateView | None = None) -> web.StreamResponse:
        facts.status_code = resp.status
        rh = resp.headers
        for h in _REQUEST_ID_HEADERS:
            if h in rh:
                facts.request_id_header = rh[h]
                break
        facts.quota = _quota(route, rh)
        content_type = rh.get("Content-Type")
        meter = Meter(DIALECTS.get(route.parser) if route.parser else None, content_type,
                      rh.get("Content-Encoding"), route.path_stream)
        facts.stream = live.stream = meter.streaming
        # What changes the client's copy: the injection's undoing, or a provider's filter.
        client_filter = injector.stripper() if injector is not None and meter.streaming else \
            route.provider.response_filter(
                request.method, route.url, route.upstream.url,
                lambda: f"{request.scheme}://{request.host}/{route.upstream.name}")
        # The head waits for the body only when the body's first bytes are here already
        # (one write to the client instead of two; nothing is held back): it goes out with
        # the first chunk written just below.
        cls = _WithFirstChunk if client_filter is None and resp.content.total_bytes \
            else web.StreamResponse
        out = cls(status=resp.status, reason=resp.reason,
                  headers=hdr.inbound(rh, drop_length=client_filter is not None))
        out.headers["X-Meter-Call-Id"] = facts.call_id
        if view is not None:  # a Tokenbooth rate limit applied: its figures replace the
            out.headers.update(headers_for(view, route.provider.name))  # upstream's names
        clean = False
        loop = asyncio.get_running_loop()
        watch = IdleWatch(loop, self.config.server.idle_timeout_seconds, resp.content)
        # Progress for the live feed, at most every PROGRESS_SECONDS, only for streams.
        progress_at = loop.time() + PROGRESS_SECONDS if meter.streaming else float("inf")
        try:
            await out.prepare(request)
            write, feed, watching, now = out.write, meter.feeder(), self.recorder.watching, \
                loop.time
            last = resp.content.at_eof  # the body's last bytes: sent in one write with its end
            async for chunk in resp.content.iter_any():
                t = watch.last = now()
                if facts.first_byte is None:
                    facts.first_byte = time.monotonic()
                watch.writing = True
                if client_filter is not None:
                    data = client_filter.feed(chunk)
                    if data:
                        await write(data)
                elif last():
                    await out.write_eof(chunk)
                else:
                    await write(chunk)
                watch.writing = False
                feed(chunk)
                if t >= progress_at and watching():
                    progress_at = t + PROGRESS_SECONDS
                    self._progress(live, meter.progress())
            if client_filter is not None:
                tail = client_filter.flush()
                if tail:
                    await write(tail)
            await out.write_eof()
            clean = True
        except aiohttp.ClientPayloadError:
            facts.end = End.UPSTREAM_CUT
            _break(request)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            facts.end = End.IDLE
            _break(request)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            facts.end = End.CLIENT_GONE
        except aiohttp.ClientError as exc:
            facts.end, facts.end_detail = End.READ_FAILED, type(exc).__name__
            _break(request)
        finally:
            watch.cancel()
            facts.observation = meter.finish()
            if clean:
                resp.release()
            else:
                resp.close()  # closes the upstream connection: generation stops promptly
        return out

    def _progress(self, live: LiveCall, obs: Observation | None) -> None:
        """Running counts for the live feed; a failure here never touches the call."""
        try:
            update_live(self.recorder, live, obs)
        except Exception:
            log.exception("live progress failed for call %s", live.call_id)


def _quota(route: Route, headers: Any) -> Quota | None:
    """The response's rate-limit and quota headers, read by its provider (a failure is
    logged; the call goes on)."""
    try:
        return route.provider.quota(headers, time.time())
    except Exception:
        log.exception("quota headers of upstream %s not read", route.upstream.name)
        return None


def _raw_rest(request: web.Request, name: str) -> str | None:
    """The path after `/{name}/` as the client encoded it (None if it cannot be cut)."""
    raw = request.raw_path.partition("?")[0]
    prefix = f"/{name}/"
    return raw[len(prefix):] if raw.startswith(prefix) else None


def _break(request: web.Request) -> None:
    """End the client's response as broken: no clean end, no forged [DONE]."""
    transport = request.transport
    if transport is not None:
        transport.abort()

