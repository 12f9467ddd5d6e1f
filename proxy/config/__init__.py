"""Configuration: YAML file -> frozen dataclasses, validated once at start-up.

`model` holds the dataclasses (each default written once, as a field default), `parsing`
validates a loaded YAML tree into a `Config` (errors name the YAML path of the bad key),
with `reader` (walking the tree: `${NAME}` expansion, keys, defaults, numbers) and `limits`
(the budgets, notify and rate_limits sections); `yamlfile` reads a file.
"""

from __future__ import annotations

from proxy.config.model import (
    RESERVED_NAMES,
    AdminConfig,
    AttributionConfig,
    BudgetConfig,
    BudgetWindow,
    Config,
    ConfigError,
    ExportConfig,
    LedgerConfig,
    MetricsConfig,
    ModelPrice,
    NotifyConfig,
    OtelConfig,
    PriceAdjustment,
    RateLimitConfig,
    ServerConfig,
    Upstream,
)
from proxy.config.parsing import parse
from proxy.config.yamlfile import load

__all__ = [
    "RESERVED_NAMES",
    "AdminConfig",
    "AttributionConfig",
    "BudgetConfig",
    "BudgetWindow",
    "Config",
    "ConfigError",
    "ExportConfig",
    "LedgerConfig",
    "MetricsConfig",
    "ModelPrice",
    "NotifyConfig",
    "OtelConfig",
    "PriceAdjustment",
    "RateLimitConfig",
    "ServerConfig",
    "Upstream",
    "load",
    "parse",
]
