"""make_app(config): the composition root. Builds every dependency and wires the routes.

Imported only by proxy.cli and the tests.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_urldispatcher import _default_expect_handler
from prometheus_client import CollectorRegistry

from proxy import admin, state
from proxy.admission import Admission
from proxy.admission.budgets import BudgetCheck, BudgetStore, FleetBudgets, LocalBudgets
from proxy.admission.rate_fleet import FleetRates
from proxy.admission.rates import RateCheck
from proxy.backends import LedgerUnavailable
from proxy.config import Config
from proxy.estimate import Estimator
from proxy.fingerprint import KeyFingerprinter
from proxy.fleet import Fleet
from proxy.forward import Forwarder
from proxy.keyring import KeyAdmin, KeyRegistry, install_secret
from proxy.lifecycle import Lifecycle
from proxy.notices import Notifier
from proxy.pricing import PriceBook
from proxy.recorder import Recorder
from proxy.sinks.base import Sink
from proxy.sinks.budgets import Budgets
from proxy.sinks.export import WebhookSink, make_exports
from proxy.sinks.feed import Broadcaster
from proxy.sinks.ledger import Ledger
from proxy.sinks.metrics import Metrics
from proxy.sinks.quota import QuotaBoard
from proxy.tasks import spawn
from proxy.upstream import UpstreamPool

__all__ = ["make_app"]


class RedactMalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse with a traceback quoting the offending bytes:
    a header line with a key, a URL, a piece of the prompt. Keep the fact, drop the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed request refused: %s (status %s)"
            record.args = (type(exc).__name__, exc.code)
            record.exc_info, record.exc_text = None, None
        return True


def _redact_server_log() -> None:
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, RedactMalformedRequests) for f in logger.filters):
        logger.addFilter(RedactMalformedRequests())


def _load_later(est: Estimator, name: str) -> None:
    """A vocabulary wanted for the first time: loaded in a thread, off the call's path."""
    spawn(asyncio.to_thread(est.load_one, name), name=f"tokenbooth-vocabulary-{name}")


def _otel_sink(config: Config, registry: CollectorRegistry, prices: PriceBook) -> tuple[Any, ...]:
    """The OTLP export sink, only with `otel:` configured: the OpenTelemetry SDK is
    imported then and only then (the default start-up neither loads nor pays for it)."""
    if config.otel is None or not (config.otel.metrics or config.otel.spans):
        return ()
    from proxy.sinks.otel import OtelSink

    return (OtelSink(config.otel, registry, upstreams=config.upstreams,
                     tag_labels=config.metrics.tag_labels,
                     max_label_values=config.metrics.max_label_values,
                     max_series=config.metrics.max_series,
                     known_models=prices.known_models),)


def make_app(config: Config, *, estimator: Estimator | None = None,
             extra_sinks: tuple[Sink, ...] = ()) -> web.Application:
    """The whole proxy as an aiohttp Application; nothing starts until it runs."""
    _redact_server_log()
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        # Request bodies pass as the client encoded them (a gzip body stays gzip for the
        # upstream; the meter reads a capped side copy); idle keep-alive connections close.
        handler_args={"auto_decompress": False,
                      "keepalive_timeout": config.server.keepalive_timeout_seconds})
    registry = CollectorRegistry()
    prices = PriceBook(config.prices, config.adjustments)
    est = estimator or Estimator(dict(config.estimation_factors))
    metrics = Metrics(registry, max_label_values=config.metrics.max_label_values,
                      upstreams=tuple(config.upstreams), max_series=config.metrics.max_series,
                      tag_labels=config.metrics.tag_labels, prices_version=prices.library_version,
                      known_models=prices.known_models)
    ledger = Ledger(config.ledger.target, queue_rows=config.ledger.queue_rows,
                    flush_seconds=config.ledger.flush_seconds,
                    spool_path=config.ledger.spool, retention_days=config.ledger.retention_days,
                    on_rows=metrics.ledger_rows_changed,
                    on_error=lambda: metrics.sink_failed("ledger"))
    feed = Broadcaster()
    budget_check = BudgetCheck(config.budgets)
    notifier = Notifier(config.notify) if config.budgets else None  # budget notices
    rate_check = RateCheck(config.rate_limits)
    budgets = Budgets(budget_check, registry, notifier, rates=rate_check)
    # rate limits first: on a shared ledger their reservation rides on the budgets' trip
    admission = Admission((rate_check, budget_check), prices, est)
    exports = make_exports(config.exports, metrics.export_result)
    quota = QuotaBoard(registry, max_accounts=config.metrics.max_label_values)
    otel = _otel_sink(config, registry, prices)
    recorder = Recorder(est, prices, lambda _c: None, [ledger, metrics, feed, budgets, quota,
                                                       *exports, *otel, *extra_sinks],
                        on_sink_error=metrics.sink_failed, on_drop=metrics.record_dropped,
                        recorded=ledger.recorded)
    recorder.watching = lambda: feed.active
    feed.calls = recorder.inflight
    lifecycle = Lifecycle()
    app[state.CONFIG] = config
    app[state.METRICS] = metrics
    app[state.LEDGER] = ledger
    app[state.FEED] = feed
    app[state.BUDGETS] = budgets
    app[state.RECORDER] = recorder
    app[state.LIFECYCLE] = lifecycle
    app[state.QUOTA] = quota
    app[state.RATES] = rate_check

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        if not est.loaded:  # o200k_base now; cl100k_base when an older model needs it
            await asyncio.to_thread(est.load, ("o200k_base",))
            est.on_demand = lambda name: _load_later(est, name)
        await asyncio.to_thread(prices.warm)
        await ledger.open()
        backend = ledger.backend
        fleet = None
        store: BudgetStore
        # the install's secret (a shared ledger's is the fleet's): key ids and consumer keys
        secret = await install_secret(backend)
        recorder.fingerprint = KeyFingerprinter(secret)
        keys = KeyRegistry(backend, secret)
        try:
            await keys.open()
        except backend.unavailable as exc:
            raise LedgerUnavailable(f"{backend!r}: consumer keys not readable: {exc}") from None
        app[state.KEYS] = keys
        app[state.KEY_ADMIN] = KeyAdmin(backend, secret)
        if backend.fleet is not None:
            store = fleet_budgets = FleetBudgets(backend.fleet)  # reserved in the shared ledger
            fleet = Fleet(backend.fleet, fleet_budgets, feed)
            fleet_rates = FleetRates(backend.fleet)  # the fleet's log, one trip with budgets
            fleet_rates.replica = fleet.replica
            rate_check.open(fleet_rates)
            ledger.on_committed = fleet_budgets.rows_written
        else:
            store = LocalBudgets(backend)  # reserved in this process
            await rate_check.restore(backend)  # the rate limits' windows, in this process
        await budget_check.open(store)
        if notifier is not None:  # the outbox is the ledger's
            notifier.start(backend, fleet.replica if fleet is not None else None,
                           shared=fleet is not None)
        for sink in exports:
            if isinstance(sink, WebhookSink):  # delivers from the ledger, after its cursor
                sink.start(ledger)
        if fleet is not None:
            await fleet.start()
        s = config.server
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.max_connections, limit_per_host=0,
                                           ttl_dns_cache=300),
            # No total deadline (streams run for minutes) and no sock_read: the idle timeout
            # is the Forwarder's (one deadline for the head, an IdleWatch for the body).
            timeout=aiohttp.ClientTimeout(total=None, connect=s.connect_timeout_seconds,
                                          sock_connect=s.connect_timeout_seconds),
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )
        # the forwarded calls' upstream leg (the session keeps WebSockets and HEAD)
        pool = UpstreamPool(limit=s.max_connections, connect_timeout=s.connect_timeout_seconds,
                            ssl_context=await asyncio.to_thread(ssl.create_default_context))
        app[state.FORWARDER] = Forwarder(config, session, recorder, lifecycle, admission,
                                         keys, pool)
        keys.start()
        for sink in otel:  # the OTel SDK's providers and export threads
            sink.start()
        recorder.start()
        lifecycle.ready = True
        try:
            yield
        finally:
            lifecycle.draining = True
            if fleet is not None:  # heartbeats go on (reservations stay ours) until the end
                fleet.stopping = True
            await keys.aclose()
            await recorder.drain()
            if notifier is not None:  # the last records' notices, before the ledger closes
                await notifier.aclose()
            await recorder.aclose()  # records every finished call, then flushes the ledger
            if fleet is not None:
                await fleet.aclose()
            await pool.close()
            await session.close()

    app.cleanup_ctx.append(lifetime)

    async def forward(request: web.Request) -> web.StreamResponse:
        return await request.app[state.FORWARDER].handle(request)

    app.add_routes(admin.routes())
    async def expect(request: web.Request) -> None:
        """`Expect: 100-continue`: no 100 for a body over the limit; the handler then answers
        413 before reading a byte of it."""
        if (request.content_length or 0) > config.server.max_body_bytes:
            return None
        await _default_expect_handler(request)
        return None

    app.router.add_route("*", "/{upstream}/{rest:.*}", forward, expect_handler=expect)
    return app
