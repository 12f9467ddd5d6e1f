"""The `tokenbooth` command: `serve`, `check-config`, `prices`, and the ledger's commands
(`proxy/commands/`): `report`, `reprice`, `import`, `copy-ledger`, `calls`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from proxy import __version__
from proxy.backends.registry import UnknownLedger, parse_url
from proxy.config import Config, ConfigError, load

__all__ = ["main"]

SHUTDOWN_DEREGISTER_SECONDS = 5.0  # listener kept open after SIGTERM, /readyz 503
SHUTDOWN_CUT_SECONDS = 1.0  # the end of the drain: cut what is left, record it, close
log = logging.getLogger("tokenbooth")


def _config(args: argparse.Namespace) -> Config:
    config = load(args.config)
    if getattr(args, "host", None):
        config = replace(config, host=args.host)
    if getattr(args, "port", None) is not None:
        config = replace(config, port=args.port)
    db = getattr(args, "db", None)
    if db:
        try:
            url = parse_url(db)
        except UnknownLedger as exc:
            raise ConfigError(f"--db: {exc}") from None
        if url.local:
            config = replace(config, ledger=replace(config.ledger, url=None, path=url.target))
        else:
            config = replace(config, ledger=replace(config.ledger, url=db))
    return config


async def _serve(config: Config) -> None:
    from aiohttp import web

    from proxy import state
    from proxy.app import make_app
    from proxy.server import GuardedRunner, default_max_client_connections

    app = make_app(config)

    async def settle_heap(app: web.Application) -> None:
        # After start-up (vocabularies, price tables) nothing of that is garbage: freeze it
        # so the cyclic collector stops re-scanning it on every full collection.
        gc.collect()
        gc.freeze()

    app.on_startup.append(settle_heap)
    # The drain is bounded by our own deadline (below): the calls still running are cut
    # then, so what is left at cleanup (a live feed, idle keep-alives) is closed at once.
    s = config.server
    runner = GuardedRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=0.1, header_timeout=s.header_timeout_seconds,
                           max_client_connections=s.max_client_connections
                           or default_max_client_connections(),
                           max_connections_per_client=s.max_connections_per_client,
                           on_refused=app[state.METRICS].client_refused)
    await runner.setup()
    tls = None
    if config.tls_cert and config.tls_key:
        import ssl

        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(config.tls_cert, config.tls_key)
    site = web.TCPSite(runner, config.host, config.port, backlog=1024, ssl_context=tls)
    try:
        await site.start()
    except OSError:
        # Stop what start-up began (the ledger's writer, the recorder, the fleet): their
        # threads and tasks would keep a process that serves nothing alive.
        await runner.cleanup()
        raise
    log.info("tokenbooth %s listening on %s://%s:%d (ledger %s)", __version__,
             "https" if tls else "http", config.host, config.port,
             app[state.LEDGER].backend)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    life = app[state.LIFECYCLE]
    life.draining = True
    drain = config.server.drain_seconds
    # the last part of the drain cuts the calls still running, records them and closes
    cut_at = loop.time() + drain - min(SHUTDOWN_CUT_SECONDS, drain / 4)
    log.info("draining: %d call(s) in flight, up to %gs", life.inflight, drain)
    # /readyz answers 503 while the listener stays open a moment, so load balancers stop
    # sending before connections are refused; then in-flight calls get the rest of the
    # drain. The whole shutdown stays within drain_seconds.
    await asyncio.sleep(min(SHUTDOWN_DEREGISTER_SECONDS, drain / 3))
    await site.stop()
    if not await life.wait_idle(max(cut_at - loop.time(), 0)):
        log.warning("drain deadline reached with %d call(s) in flight: cut", life.inflight)
        life.cutting = True  # what is cancelled now was cut by us, not by its client
        if not await life.cut(0.5):
            log.warning("%d cut call(s) did not end in time", life.inflight)
    await runner.cleanup()
    log.info("stopped")


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a Linux dependency
        runner = asyncio.run
    from proxy.backends import LedgerUnavailable

    try:
        runner(_serve(config))
    except LedgerUnavailable as exc:
        print(f"tokenbooth: cannot open the ledger: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tokenbooth: cannot listen on {config.host}:{config.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    import yaml

    config = _config(args)
    print(yaml.safe_dump(config.masked(), sort_keys=False), end="")
    return 0


def cmd_prices(args: argparse.Namespace) -> int:
    from proxy.dialects import price_provider
    from proxy.pricing import PriceBook

    config = _config(args)
    if args.upstream:
        up = config.upstreams.get(args.upstream)
        if up is None:
            print(f"tokenbooth: --upstream: unknown upstream {args.upstream!r} (configured: "
                  f"{', '.join(config.upstreams)})", file=sys.stderr)
            return 2
        pids: list[str | None] = [price_provider(up.dialect, up.name)]
    else:  # as the ledger would price a call through any configured upstream
        pids = [None, *dict.fromkeys(price_provider(u.dialect, u.name)
                                     for u in config.upstreams.values())]
    book = PriceBook(config.prices, config.adjustments)
    for pid in pids:
        info = book.describe(args.model, pid)
        if info["source"] is not None:
            break
    if info["source"] is None:
        print(f"{args.model}: no price known (calls are recorded with cost NULL, "
              f"counted as unpriced)")
        return 1
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['model']}" + (f" ({info['provider']})" if info.get("provider") else "")
          + f": {info['source']}")
    for name, text in info["prices"].items():
        print(f"  {name}: {text}")
    for label, prices in (info.get("variants") or {}).items():
        print(f"  when {label}:")
        for name, text in prices.items():
            print(f"    {name}: {text}")
    return 0


def _add_common(p: argparse.ArgumentParser, db: bool = True) -> None:
    p.add_argument("--config", help="config file (default ./config.yaml if present)")
    if db:
        p.add_argument("--db", help="ledger: a SQLite path or a postgresql:// URL "
                                    "(default from config: ./tokenbooth.db)")


def build_parser() -> argparse.ArgumentParser:
    from proxy.commands import COMMANDS
    from proxy.commands.common import runner

    parser = argparse.ArgumentParser(prog="tokenbooth", description="Metering LLM proxy.")
    parser.add_argument("--version", action="version", version=f"tokenbooth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the proxy")
    _add_common(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("check-config", help="validate and print the effective config")
    _add_common(p, db=False)
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("prices", help="the price that would apply to MODEL, and its source")
    _add_common(p, db=False)
    p.add_argument("model")
    p.add_argument("--upstream")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_prices)
    for command in COMMANDS:
        command.add_parser(sub, _add_common).set_defaults(func=runner(command.run, _config))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"tokenbooth: config error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
