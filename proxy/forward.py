"""The catch-all handler: request -> upstream -> StreamResponse, with a Meter on the side.

Forward first, observe second: each upstream chunk is written to the client as it arrives
(`iter_any`, never re-framed), then fed to the meter. Whatever way the call ends (normal,
upstream error, client abort, upstream cut, timeout, unreachable, rejected), exactly one
CallFacts goes to the recorder, from the `finally` block.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import posixpath
import time
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from proxy import headers as hdr
from proxy.admission import Admission
from proxy.config import Config, Upstream
from proxy.dialects import DIALECTS, PROVIDERS, Observation, provider_by_headers
from proxy.framing.decoders import decode_capped
from proxy.idle import IdleWatch
from proxy.lifecycle import Lifecycle
from proxy.meter import Meter
from proxy.record import CallFacts, LiveCall, iso_utc
from proxy.recorder import Recorder
from proxy.routing import PathEscape, Route, normalize_rest, resolve

__all__ = ["Forwarder", "error_response"]

log = logging.getLogger("tokenbooth.forward")
PROGRESS_SECONDS = 0.5
_THREAD_PARSE_BYTES = 256 * 1024
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-generation-id", "apim-request-id",
                       "x-amzn-requestid")


def error_response(status: int, kind: str, message: str, *, call_id: str | None = None,
                   extra: dict[str, Any] | None = None, provider: Any = None) -> web.Response:
    """Our own refusals, in the error shape the caller's SDK reads (its provider's)."""
    if provider is not None:
        body, headers = provider.error(status, kind, message, extra or {})
    else:
        body, headers = {"error": {"type": kind, "message": message, **(extra or {})}}, {}
    resp = web.json_response(body, status=status, headers=headers)
    if call_id:
        resp.headers["X-Meter-Call-Id"] = call_id
    return resp


def _attribute(facts: CallFacts, provider_tags: dict[str, str]) -> None:
    """Tags the client's own SDK sends (Claude Code's session and sub-agent), under the
    caller's X-Meter-* tags: those always win."""
    info = facts.request_info
    if info is not None and info.session:
        provider_tags.setdefault("session", info.session)
    for key, value in provider_tags.items():
        facts.tags.setdefault(key, value)


def _parse_encoded(body: bytes, encoding: str | None, cap: int) -> Any:
    """The JSON of a body the client compressed, from a side copy inflated up to `cap`
    bytes (a decompression bomb stops there); None when it cannot be read. The upstream
    gets the client's bytes either way."""
    if encoding is None:
        return _parse(body)
    try:
        return _parse(decode_capped(body, encoding, cap))
    except ValueError as exc:
        log.info("request body not metered: %s", exc)
        return None


def _parse(body: bytes) -> Any:
    """The request body's JSON, parsed once per call for every consumer; None if not JSON."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


class _WithFirstChunk(web.StreamResponse):
    """A response whose head is sent together with the first body bytes (as aiohttp's own
    web.Response does), for a body already received when the head is prepared."""

    _send_headers_immediately = False


class _Ended(Exception):
    """Internal: the call ended early with this response (already decided)."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


class Forwarder:
    """Holds what every call needs; built once in make_app()."""

    def __init__(self, config: Config, session: aiohttp.ClientSession, recorder: Recorder,
                 lifecycle: Lifecycle, admission: Admission | None = None) -> None:
        self.config = config
        self.session = session
        self.recorder = recorder
        self.lifecycle = lifecycle
        self.admission = admission
        self.no_inject: set[str] = set()  # upstreams that answered 400 to injected requests
        self._client_keys = {v: k for k, v in config.client_keys.items()}
        self._known = ", ".join(sorted(config.upstreams))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["upstream"]
        rest = request.match_info["rest"]
        up = self.config.upstreams.get(name)
        call_id = os.urandom(12).hex()
        facts = CallFacts(call_id, time.time(), time.monotonic(), name,
                          up.dialect if up else None, "other", request.method,
                          f"/{name}/{rest}")
        tagset = hdr.parse_tags(request.headers)
        facts.tags = tagset.tags
        lifecycle = self.lifecycle
        lifecycle.enter()
        live: LiveCall | None = None
        try:
            if up is None:
                facts.outcome, facts.error = "rejected", "unknown upstream"
                facts.status_code = 404
                return error_response(404, "unknown_upstream",
                                      f"unknown upstream {name!r}; known: {self._known}",
                                      call_id=call_id,
                                      provider=provider_by_headers(request.headers))
            facts.free = up.free
            try:
                rest, raw_rest = normalize_rest(rest, _raw_rest(request, name))
            except PathEscape:
                facts.outcome, facts.error = "rejected", "path leaves the upstream's base path"
                facts.status_code = 400
                facts.path = f"/{name}{posixpath.normpath('/' + rest)}"  # never a raw `..`
                return error_response(400, "bad_request",
                                      "the path's '..' segments leave the upstream's base path",
                                      call_id=call_id, provider=PROVIDERS[up.dialect])
            facts.path = f"/{name}/{rest}"
            route = resolve(up, request.method, rest, raw_rest)
            facts.operation, facts.parser = route.operation, route.parser
            facts.path_model, facts.stream = route.path_model, route.path_stream
            facts.batch_id, facts.price_provider = route.batch_id, route.price_provider
            facts.credential = hdr.credential(request.headers)
            replace_auth = self._authenticate(up, route, facts)
            try:
                if (request.content_length or 0) > self.config.server.max_body_bytes:
                    raise web.HTTPRequestEntityTooLarge(self.config.server.max_body_bytes,
                                                        request.content_length or 0)
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                facts.outcome, facts.error = "rejected", "request body too large"
                facts.status_code = 413
                resp = error_response(
                    413, "request_too_large",
                    f"request body exceeds server.max_body_bytes "
                    f"({self.config.server.max_body_bytes} bytes)", call_id=call_id,
                    provider=route.provider)
                resp.force_close()  # the rest of the body is never read
                return resp
            facts.request_body = body
            dialect = DIALECTS.get(route.parser) if route.parser else None
            encoding = request.headers.get("Content-Encoding")
            if dialect is not None:
                # parsed once for every consumer; a large or encoded body off the event loop
                if encoding is None and len(body) <= _THREAD_PARSE_BYTES:
                    facts.request_doc = _parse(body)
                else:
                    facts.request_doc = await asyncio.to_thread(
                        _parse_encoded, body, encoding, self.config.server.max_body_bytes)
                facts.request_info = dialect.request_info(facts.request_doc)
            _attribute(facts, route.provider.tags(request.headers))
            live = LiveCall(call_id, iso_utc(facts.started), name, route.operation, False,
                            facts.tags.get("agent"), facts.tags.get("session"),
                            facts.tags.get("run"), route.path_model,
                            tags=facts.tags, price_provider=route.price_provider)
            if self.admission is not None and self.admission.active:
                denied = await self.admission.admit(facts, route)
                if denied is not None:
                    facts.outcome, facts.error = "rejected", f"budget {denied.name} exhausted"
                    facts.status_code = 429
                    resp = error_response(
                        429, "budget_exceeded", denied.message, call_id=call_id,
                        extra={"budget": denied.name}, provider=route.provider)
                    resp.headers["X-Meter-Budget"] = denied.name
                    # A retry cannot succeed before the window ends: tell the SDKs so
                    # (the openai and anthropic SDKs obey x-should-retry).
                    resp.headers["x-should-retry"] = "false"
                    if denied.retry_after_seconds is not None:
                        resp.headers["Retry-After"] = str(denied.retry_after_seconds)
                    return resp
            if route.batch_id is None:  # a batch download is recorded as its result lines
                self.recorder.started(live)
            return await self._forward(request, route, body, facts, live, replace_auth)
        except _Ended as ended:
            return ended.response
        except asyncio.CancelledError:
            if lifecycle.cutting:
                facts.outcome, facts.error = "timeout", "cut at shutdown: drain deadline"
            else:
                facts.outcome, facts.error = "client_aborted", "client disconnected"
            raise
        finally:
            facts.ended = time.monotonic()
            self.recorder.submit(facts)
            lifecycle.leave()

    def _authenticate(self, up: Upstream, route: Route,
                      facts: CallFacts) -> dict[str, str] | None:
        """With `api_key` on the upstream, clients present a client key and we supply ours."""
        if not up.api_key and up.aws is None:
            return None
        client = self._client_keys.get(facts.credential or "")
        if client is None:
            facts.outcome, facts.error = "rejected", "client authentication failed"
            facts.status_code = 401
            raise _Ended(error_response(
                401, "authentication_error",
                "this upstream needs a client key from auth.client_keys", call_id=facts.call_id,
                provider=route.provider))
        facts.client = client
        return route.provider.key_headers(up.api_key) if up.api_key else {}

    async def _open(self, request: web.Request, route: Route, url: str, body: bytes,
                    injected: bool, replace_auth: dict[str, str] | None
                    ) -> aiohttp.ClientResponse:
        headers: Any = hdr.outbound(request.headers, identity=injected,
                                    replace_auth=replace_auth)
        if route.upstream.aws is not None:  # signed for the URL exactly as it will be sent
            headers = route.provider.sign(route.upstream, request.method, str(URL(url)),
                                          headers, body)
        # Until the response head arrives the idle timeout is one deadline; after it, the
        # body's IdleWatch takes over (the session itself has no read timeout).
        async with asyncio.timeout(self.config.server.idle_timeout_seconds):
            return await self.session.request(
                request.method, url, data=body if body else None, allow_redirects=False,
                headers=headers,
            )

    async def _forward(self, request: web.Request, route: Route, body: bytes, facts: CallFacts,
                       live: LiveCall, replace_auth: dict[str, str] | None
                       ) -> web.StreamResponse:
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
                                    replace_auth)
            if injected_body is not None and resp.status == 400:
                # Older Azure api-versions reject stream_options: resend once, remember.
                resp.close()
                self.no_inject.add(up.name)
                log.warning("upstream %s rejected stream_options; injection off for it", up.name)
                injected_body = None
                resp = await self._open(request, route, url, body, False, replace_auth)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, TimeoutError):
                facts.outcome, facts.error = "timeout", "upstream connect timeout"
                return error_response(504, "upstream_timeout",
                                      f"upstream {up.name} did not accept a connection in time",
                                      call_id=facts.call_id, provider=route.provider)
            facts.outcome, facts.error = "unreachable", "upstream unreachable"
            return error_response(502, "upstream_unreachable",
                                  f"upstream {up.name} is unreachable", call_id=facts.call_id,
                                  provider=route.provider)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            facts.outcome, facts.error = "timeout", "upstream timeout before response"
            return error_response(504, "upstream_timeout",
                                  f"upstream {up.name} did not answer in time",
                                  call_id=facts.call_id, provider=route.provider)
        except aiohttp.ClientError as exc:
            facts.outcome, facts.error = "unreachable", f"upstream error: {type(exc).__name__}"
            return error_response(502, "upstream_unreachable",
                                  f"upstream {up.name} failed: {type(exc).__name__}",
                                  call_id=facts.call_id, provider=route.provider)
        return await self._relay(request, route, resp, facts, live,
                                 injector if injected_body is not None else None)

    async def _relay(self, request: web.Request, route: Route, resp: aiohttp.ClientResponse,
                     facts: CallFacts, live: LiveCall, injector: Any) -> web.StreamResponse:
        facts.status_code = resp.status
        rh = resp.headers
        for h in _REQUEST_ID_HEADERS:
            if h in rh:
                facts.request_id_header = rh[h]
                break
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
        clean = False
        loop = asyncio.get_running_loop()
        watch = IdleWatch(loop, self.config.server.idle_timeout_seconds, resp.content)
        # Progress for the live feed, at most every PROGRESS_SECONDS, only for streams.
        progress_at = loop.time() + PROGRESS_SECONDS if meter.streaming else float("inf")
        try:
            await out.prepare(request)
            write, feed, watching, now = out.write, meter.feed, self.recorder.watching, loop.time
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
            facts.outcome = "ok" if resp.status < 400 else "upstream_error"
            if resp.status >= 400:
                facts.error = f"upstream status {resp.status}"
        except aiohttp.ClientPayloadError:
            facts.outcome, facts.error = "upstream_aborted", "upstream closed the stream early"
            _break(request)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            facts.outcome, facts.error = "timeout", "upstream idle timeout mid-response"
            _break(request)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            facts.outcome, facts.error = "client_aborted", "client disconnected"
        except aiohttp.ClientError as exc:
            facts.outcome, facts.error = "upstream_aborted", f"upstream error: {type(exc).__name__}"
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
            self._update_live(live, obs)
        except Exception:
            log.exception("live progress failed for call %s", live.call_id)

    def _update_live(self, live: LiveCall, obs: Observation | None) -> None:
        if obs is None:
            return
        usage = obs.usage
        if usage is not None and usage.output_tokens is not None:
            live.input_tokens, live.output_tokens = usage.input_tokens, usage.output_tokens
            live.usage_source = "reported"
            live.usage = usage  # every billed unit: priced as the final record will be
        else:
            if usage is not None:
                live.input_tokens = usage.input_tokens
            live.output_tokens = (len(obs.output_text) + obs.output_chars_dropped + 3) // 4
            live.usage_source = "estimated"
            live.usage = None if usage is None else replace(usage,
                                                            output_tokens=live.output_tokens)
        if obs.response_model:
            live.model = obs.response_model
        self.recorder.progress(live)


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

