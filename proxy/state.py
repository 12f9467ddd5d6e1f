"""Typed application keys: the only way handlers reach shared state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from proxy.admission.rates import RateCheck
    from proxy.config import Config
    from proxy.forward import Forwarder
    from proxy.keyring import KeyAdmin, KeyRegistry
    from proxy.lifecycle import Lifecycle
    from proxy.recorder import Recorder
    from proxy.sinks.budgets import Budgets
    from proxy.sinks.feed import Broadcaster
    from proxy.sinks.ledger import Ledger
    from proxy.sinks.metrics import Metrics
    from proxy.sinks.quota import QuotaBoard

__all__ = ["BUDGETS", "CONFIG", "FEED", "FORWARDER", "KEYS", "KEY_ADMIN", "LEDGER",
           "LIFECYCLE", "METRICS", "QUOTA", "RATES", "RECORDER"]

CONFIG: web.AppKey[Config] = web.AppKey("config")
FORWARDER: web.AppKey[Forwarder] = web.AppKey("forwarder")
RECORDER: web.AppKey[Recorder] = web.AppKey("recorder")
LEDGER: web.AppKey[Ledger] = web.AppKey("ledger")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
FEED: web.AppKey[Broadcaster] = web.AppKey("feed")
BUDGETS: web.AppKey[Budgets] = web.AppKey("budgets")
LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("lifecycle")
QUOTA: web.AppKey[QuotaBoard] = web.AppKey("quota")
KEYS: web.AppKey[KeyRegistry] = web.AppKey("keys")  # consumer keys, by their secret's hash
KEY_ADMIN: web.AppKey[KeyAdmin] = web.AppKey("key_admin")  # issue, change, revoke, rotate
RATES: web.AppKey[RateCheck] = web.AppKey("rates")  # rate limits (issue 20)
